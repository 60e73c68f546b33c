"""A word-level tokenizer whose vocabulary comes from training captions only."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from alignfuse.errors import DataError

_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
PAD, UNK = "<pad>", "<unk>"


def split_words(text: str) -> list[str]:
    """Lower-case and split into words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


class Tokenizer:
    """Maps words to ids; any word not seen when the vocabulary was built maps to ``<unk>``.

    Example:
        >>> tok = Tokenizer.build(["a red circle", "a blue square"])
        >>> tok.encode("a crimson circle")
        [2, 1, 4]
        >>> tok.decode(tok.encode("a crimson circle"))
        'a <unk> circle'
    """

    def __init__(self, words: Sequence[str]) -> None:
        if list(words[:2]) != [PAD, UNK]:
            raise ValueError("a vocabulary starts with <pad> and <unk>")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Tokenizer:
        """Vocabulary of every word seen at least ``min_count`` times, most frequent first."""
        counts = Counter(w for t in texts for w in split_words(t))
        if not counts:
            raise DataError("cannot build a vocabulary from no text")
        words = sorted(
            (w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w)
        )
        return cls([PAD, UNK, *words])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, text: str) -> list[int]:
        """Word ids of ``text`` (unknown words become ``<unk>`` = 1)."""
        return [self.index.get(w, 1) for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words for ids, ``<pad>`` dropped."""
        return " ".join(self.words[i] for i in ids if i != 0)

    def batch(self, texts: Sequence[str], max_len: int = 32) -> dict[str, torch.Tensor]:
        """Pad a batch: ``ids`` (B, L) int64 and ``lengths`` (B,) int64 (at least 1)."""
        seqs = [self.encode(t)[:max_len] or [1] for t in texts]
        length = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), length, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return {"ids": ids, "lengths": torch.tensor([len(s) for s in seqs])}

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON."""
        Path(path).write_text(json.dumps({"words": self.words}))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a vocabulary written by :meth:`save`."""
        try:
            words = json.loads(Path(path).read_text())["words"]
        except (OSError, ValueError, KeyError) as err:
            raise DataError(f"cannot read vocabulary {str(path)!r}: {err}") from None
        return cls(words)
