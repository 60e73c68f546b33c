"""Text encoders. Every text encoder has ``prepare(texts) -> dict of tensors`` (run in the
data loader) and ``forward(**prepared) -> (B, out_dim)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.registry import ENCODERS


def _masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class VocabTextEncoder(nn.Module, ABC):
    """Base for encoders over a :class:`Tokenizer` vocabulary."""

    modality = "text"
    trainable = True

    def __init__(self, tokenizer: Tokenizer, max_len: int = 32) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.max_len = max_len

    def prepare(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and lengths for a batch of strings."""
        return self.tokenizer.batch(texts, self.max_len)

    @abstractmethod
    def tokens(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-word features ``(B, L, out_dim)``."""

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The masked mean of the word features, ``(B, out_dim)``."""
        return _masked_mean(self.tokens(ids, lengths), lengths)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` (the masked mean of the words) and ``tokens`` from one pass."""
        tok = self.tokens(ids, lengths)
        return _masked_mean(tok, lengths), tok


@ENCODERS.register("bigru")
class BiGRUTextEncoder(VocabTextEncoder):
    """Word embeddings, a bidirectional GRU, mean pooling over the words (VSE++ style)."""

    def __init__(
        self, tokenizer: Tokenizer, word_dim: int = 128, hidden: int = 128, layers: int = 1
    ) -> None:
        super().__init__(tokenizer)
        self.embed = nn.Embedding(len(tokenizer), word_dim, padding_idx=0)
        self.gru = nn.GRU(word_dim, hidden, layers, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def tokens(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-word features ``(B, L, out_dim)`` (zeros past each length)."""
        x = self.embed(ids)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        padded, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return padded


@ENCODERS.register("transformer")
class TransformerTextEncoder(VocabTextEncoder):
    """Word and position embeddings, a small pre-norm Transformer encoder, masked mean pooling."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_len: int = 32,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(tokenizer, max_len)
        self.embed = nn.Embedding(len(tokenizer), dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim * 4, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def tokens(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Per-word features ``(B, L, out_dim)``."""
        pad = (
            torch.arange(ids.shape[1], device=ids.device)[None, :]
            >= lengths.to(ids.device)[:, None]
        )
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]
        out: torch.Tensor = self.norm(self.encoder(x, src_key_padding_mask=pad))
        return out
