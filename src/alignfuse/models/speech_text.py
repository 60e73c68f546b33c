"""The speech-text dual encoder: a log-mel CNN audio tower and a text tower, each with a
linear map into one unit-norm space: a :class:`~alignfuse.models.DualEncoder` keyed
``("audio", "text")``.

Example:
    >>> from alignfuse.encoders.tokenizer import Tokenizer
    >>> model = build_speech_text(Tokenizer.build(["a red circle"]), embed_dim=8,
    ...                           text_args={"word_dim": 4, "hidden": 4})
    >>> feats = model.prepare("audio", [np.zeros(16000, dtype=np.int16)], 16000)
    >>> model.encode("audio", feats).shape
    torch.Size([1, 8])
    >>> model.encode("text", model.prepare("text", ["a red circle"])).shape
    torch.Size([1, 8])
"""

from __future__ import annotations

from typing import Any

import numpy as np  # noqa: F401  (the doctest's)

from alignfuse.encoders.audio import AudioCNN
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.models.dual_encoder import DualEncoder, build_text_encoder
from alignfuse.registry import MODELS

MODALITIES = ("audio", "text")


@MODELS.register("speech_text")
def build_speech_text(
    tokenizer: Tokenizer | None,
    embed_dim: int = 128,
    text_encoder: str = "bigru",
    text_args: dict[str, Any] | None = None,
    audio_args: dict[str, Any] | None = None,
) -> DualEncoder:
    """A speech-text dual encoder: log-mel CNN audio tower (:class:`AudioCNN`, ``audio_args``)
    + a registered text tower (task speech_text)."""
    if embed_dim < 1:
        raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
    audio = AudioCNN(**(audio_args or {}))
    text = build_text_encoder(text_encoder, tokenizer, text_args)
    return DualEncoder(audio, text, embed_dim, modalities=MODALITIES)
