"""A speech-text dual encoder: a log-mel CNN audio tower and a text tower, each with a linear
map into one unit-norm space (the speech counterpart of :class:`~alignfuse.models.DualEncoder`).

Example:
    >>> from alignfuse.encoders.tokenizer import Tokenizer
    >>> model = build_speech_text(Tokenizer.build(["a red circle"]), embed_dim=8,
    ...                           text_args={"word_dim": 4, "hidden": 4})
    >>> feats = model.audio.prepare([np.zeros(16000, dtype=np.int16)], 16000)
    >>> model.encode_audio(feats).shape, model.encode_text(["a red circle"]).shape
    (torch.Size([1, 8]), torch.Size([1, 8]))
"""

from __future__ import annotations

from typing import Any

import numpy as np  # noqa: F401  (the doctest's)
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.audio import AudioCNN
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.models.dual_encoder import build_text_encoder
from alignfuse.registry import MODELS


class SpeechTextModel(nn.Module):
    """An audio tower and a text tower, each with a linear map into one unit-norm space.

    Args:
        tokenizer: the vocabulary of a text tower trained from scratch.
        text: a registered text encoder (``bigru``, ``transformer``, ``minilm``).
        text_args: its arguments.
        audio_args: arguments of :class:`~alignfuse.encoders.audio.AudioCNN`.
        embed_dim: width of the joint space.
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None,
        text: str = "bigru",
        text_args: dict[str, Any] | None = None,
        audio_args: dict[str, Any] | None = None,
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.audio = AudioCNN(**(audio_args or {}))
        text_encoder: Any = build_text_encoder(text, tokenizer, text_args)
        self.text = text_encoder
        self.audio_proj = nn.Linear(self.audio.out_dim, embed_dim)
        self.text_proj = nn.Linear(int(text_encoder.out_dim), embed_dim)

    def encode_audio(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit embeddings ``(B, embed_dim)`` of padded log-mel frames and their lengths."""
        return F.normalize(self.audio_proj(self.audio(batch["feats"], batch["lengths"])), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Unit embeddings ``(B, embed_dim)`` of strings."""
        prepared = self.text.prepare(texts)
        return F.normalize(self.text_proj(self.text(**prepared)), dim=-1)


@MODELS.register("speech_text")
def build_speech_text(
    tokenizer: Tokenizer | None,
    embed_dim: int = 128,
    text_encoder: str = "bigru",
    text_args: dict[str, Any] | None = None,
    audio_args: dict[str, Any] | None = None,
) -> SpeechTextModel:
    """A speech-text dual encoder: log-mel CNN audio tower + a text tower (task speech_text)."""
    return SpeechTextModel(tokenizer, text_encoder, text_args, audio_args, embed_dim)
