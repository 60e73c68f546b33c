"""``spoken``: sentences synthesised by espeak-ng in several voices and speaking rates, with
the true start and end of every word and the start of every phoneme.

Sentences describe scenes in the vocabulary of the ``shapes`` data ("a small red circle is
left of the blue square"). Every sentence is rendered once by the *reference* voice
(``en-us`` at 175 words per minute, the text-to-speech reference of the temporal benchmark)
and ``renderings`` more times in other (voice, rate) combinations. Word timings come from
libespeak-ng's synthesis events (:mod:`alignfuse.data.espeak`); espeak speaks some word pairs
as one unit ("of the"), and such a unit keeps both words. Audio is cached on disk
(int16, checksummed) so benchmarks do not synthesise it again.

Example:
    >>> from alignfuse.data.espeak import espeak_available
    >>> if espeak_available():
    ...     data = load_spoken(n_sentences=2, renderings=1, use_cache=False)
    ...     print(len(data.sentences), len(data.utterances), data.utterances[0].voice)
    ... else:
    ...     print(2, 4, "en-us")
    2 4 en-us
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignfuse.data.audio import log_mel, mfcc
from alignfuse.data.cache import cached
from alignfuse.data.espeak import Synthesis, Word, synthesize
from alignfuse.errors import DataError
from alignfuse.registry import DATASETS

VERSION = 1
DEFAULT_VOICES = ("en-us", "en", "en-us+f3", "en-gb-scotland", "en-029")
DEFAULT_RATES = (130, 175, 220)
REFERENCE = ("en-us", 175)

_SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
_COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
_SIZES = ("small", "large")
_RELATIONS = ("to the left of", "to the right of", "above", "below", "next to")


@dataclass
class Utterance:
    """One rendering of a sentence."""

    sentence: int
    voice: str
    rate: int
    audio: np.ndarray  # int16 samples
    sample_rate: int
    words: list[Word]
    chars: list[int]  # character offset of each word unit in the sentence
    phonemes: list[tuple[str, float]] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return 1000.0 * len(self.audio) / self.sample_rate

    def features(self, kind: str = "mfcc", *, hop_ms: float = 10.0, **kwargs: Any) -> torch.Tensor:
        """Acoustic features ``(frames, dim)``, frame ``t`` centred at ``t * hop_ms``:
        ``"mfcc"`` (13 coefficients) or ``"logmel"`` (40 bands)."""
        if kind == "mfcc":
            return mfcc(self.audio, self.sample_rate, hop_ms=hop_ms, **kwargs)
        if kind == "logmel":
            return log_mel(self.audio, self.sample_rate, hop_ms=hop_ms, **kwargs)
        raise ValueError(f"kind must be 'mfcc' or 'logmel', got {kind!r}")

    def boundaries(self) -> dict[int, float]:
        """Word-unit boundaries in ms keyed by character offset: every unit's start, and the
        end of the last unit under the key ``-1``."""
        out = {c: w.start_ms for c, w in zip(self.chars, self.words, strict=True)}
        out[-1] = self.words[-1].end_ms
        return out


@dataclass
class SpokenData:
    """Sentences and their renderings."""

    sentences: list[str]
    utterances: list[Utterance]
    info: dict[str, Any] = field(default_factory=dict)

    def renderings(self, sentence: int) -> list[Utterance]:
        """Every rendering of a sentence except the reference one."""
        return [
            u for u in self.utterances if u.sentence == sentence and (u.voice, u.rate) != REFERENCE
        ]

    def reference(self, sentence: int) -> Utterance:
        """The reference rendering (``en-us``, 175 words per minute) of a sentence."""
        for u in self.utterances:
            if u.sentence == sentence and (u.voice, u.rate) == REFERENCE:
                return u
        raise DataError(f"sentence {sentence} has no reference rendering")


def make_sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct scene sentences, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:

        def noun() -> str:
            words = [str(rng.choice(_COLORS)), str(rng.choice(_SHAPES))]
            if rng.random() < 0.5:
                words.insert(0, str(rng.choice(_SIZES)))
            return " ".join(words)

        first = f"{'a' if rng.random() < 0.5 else 'the'} {noun()}"
        kind = rng.integers(3)
        if kind == 0:
            text = f"{first} is {rng.choice(_RELATIONS)} the {noun()}"
        elif kind == 1:
            text = f"{first} moves {rng.choice(('up', 'down', 'left', 'right'))} and turns {rng.choice(_COLORS)}"
        else:
            text = f"there is {first} and {'a' if rng.random() < 0.5 else 'the'} {noun()}"
        text = (
            text.replace(" a a", " an a").replace(" a o", " an o").replace("a orange", "an orange")
        )
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _word_chars(text: str, syn: Synthesis) -> list[int]:
    chars, pos = [], 0
    for w in syn.words:
        at = text.find(w.text, pos)
        if at < 0:
            raise DataError(f"espeak word {w.text!r} not found in {text!r}")
        chars.append(at)
        pos = at + len(w.text)
    return chars


def _generate(
    n_sentences: int, renderings: int, voices: tuple[str, ...], rates: tuple[int, ...], seed: int
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    sentences = make_sentences(n_sentences, seed)
    combos = [c for c in itertools.product(voices, rates) if c != REFERENCE]
    if renderings > len(combos):
        raise DataError(
            f"renderings={renderings} exceeds the {len(combos)} (voice, rate) combinations"
        )
    rng = np.random.default_rng(seed + 1)
    audio, meta = [], []
    for s, text in enumerate(sentences):
        picks = [REFERENCE] + [
            combos[i] for i in rng.choice(len(combos), renderings, replace=False)
        ]
        for voice, rate in picks:
            syn = synthesize(text, voice=voice, rate=rate)
            if not syn.words or len(syn.audio) == 0:
                raise DataError(f"espeak-ng produced no speech for {text!r} ({voice}, {rate})")
            audio.append(syn.audio)
            meta.append(
                {
                    "sentence": s,
                    "voice": voice,
                    "rate": rate,
                    "sample_rate": syn.sample_rate,
                    "words": [[w.text, w.start_ms, w.end_ms] for w in syn.words],
                    "chars": _word_chars(text, syn),
                    "phonemes": syn.phonemes,
                }
            )
    offsets = np.cumsum([0] + [len(a) for a in audio]).astype(np.int64)
    arrays: dict[str, np.ndarray] = {
        "audio": np.concatenate(audio).astype(np.int16),
        "offsets": offsets,
    }
    return arrays, {"sentences": sentences, "utterances": meta}


@DATASETS.register("spoken")
def load_spoken(
    n_sentences: int = 40,
    renderings: int = 3,
    voices: tuple[str, ...] = DEFAULT_VOICES,
    rates: tuple[int, ...] = DEFAULT_RATES,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> SpokenData:
    """Speech-text pairs synthesised with espeak-ng, with word and phoneme timings.

    Args:
        n_sentences: number of distinct sentences.
        renderings: renderings per sentence besides the reference (distinct voice / rate).
        voices, rates: espeak-ng voices (``espeak-ng --voices=en``; ``+f3`` style variants
            allowed) and speaking rates in words per minute to draw from.
        cache_dir, use_cache: as for ``shapes`` (``$ALIGNFUSE_CACHE``, checksummed).

    Raises:
        DataError: if libespeak-ng is not installed (``apt-get install espeak-ng``).
    """
    if n_sentences < 1 or renderings < 1:
        raise DataError(f"n_sentences and renderings must be >= 1, got {n_sentences}, {renderings}")
    if REFERENCE[0] not in voices or REFERENCE[1] not in rates:
        voices, rates = (*voices, REFERENCE[0]) if REFERENCE[0] not in voices else voices, rates
        rates = (*rates, REFERENCE[1]) if REFERENCE[1] not in rates else rates
    params = {
        "version": VERSION,
        "n_sentences": n_sentences,
        "renderings": renderings,
        "voices": list(voices),
        "rates": list(rates),
        "seed": seed,
    }

    def generate() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return _generate(n_sentences, renderings, tuple(voices), tuple(rates), seed)

    if use_cache:
        arrays, ann, folder = cached("spoken", params, cache_dir, generate)
    else:
        (arrays, ann), folder = generate(), None
    audio, offsets = arrays["audio"], arrays["offsets"]
    utts = [
        Utterance(
            m["sentence"],
            m["voice"],
            int(m["rate"]),
            audio[offsets[k] : offsets[k + 1]],
            int(m["sample_rate"]),
            [Word(t, float(a), float(b)) for t, a, b in m["words"]],
            [int(c) for c in m["chars"]],
            [(str(p), float(ms)) for p, ms in m["phonemes"]],
        )
        for k, m in enumerate(ann["utterances"])
    ]
    info = {**params, "cache": str(folder) if folder else None}
    return SpokenData(list(ann["sentences"]), utts, info)
