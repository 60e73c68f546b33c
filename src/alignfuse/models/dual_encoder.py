"""Dual-encoder models (CLIP, VSE++): one encoder per modality, a linear projection each into
a shared space, L2-normalised; the alignment loss is chosen separately from the registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.registry import ENCODERS, MODELS


class DualEncoder(nn.Module):
    """Two towers and two projections into a shared ``embed_dim`` space.

    Args:
        image_encoder: module mapping ``(B, 3, H, W)`` images to ``(B, out_dim)``.
        text_encoder: module with ``prepare(texts)`` and ``forward(**prepared)``.
        embed_dim: width of the joint space.

    Example:
        >>> tok = Tokenizer.build(["a red circle"])
        >>> model = build_dual_encoder(tok, embed_dim=16)
        >>> img = model.encode_image(torch.rand(2, 3, 64, 64))
        >>> txt = model.encode_text(model.prepare_text(["a red circle", "a circle"]))
        >>> img.shape, txt.shape
        (torch.Size([2, 16]), torch.Size([2, 16]))
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, embed_dim: int = 256):
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_proj = nn.Linear(int(image_encoder.out_dim), embed_dim)  # type: ignore[arg-type]
        self.text_proj = nn.Linear(int(text_encoder.out_dim), embed_dim)  # type: ignore[arg-type]
        self.embed_dim = embed_dim

    def prepare_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Turn strings into the text encoder's input tensors (runs in the data loader)."""
        out: dict[str, torch.Tensor] = self.text_encoder.prepare(texts)  # type: ignore[operator]
        return out

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float images to ``(B, embed_dim)`` unit vectors."""
        return F.normalize(self.image_proj(self.image_encoder(images)), dim=-1)

    def encode_text(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prepared text tensors to ``(B, embed_dim)`` unit vectors."""
        return F.normalize(self.text_proj(self.text_encoder(**prepared)), dim=-1)

    def forward(
        self, images: torch.Tensor, prepared: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(prepared)


def _text_kwargs(name: str, tokenizer: Tokenizer | None, args: dict[str, Any]) -> dict[str, Any]:
    if name == "minilm":
        return dict(args)
    if tokenizer is None:
        raise ValueError(f"text encoder {name!r} needs a tokenizer built from training captions")
    return {"tokenizer": tokenizer, **args}


@MODELS.register("dual_encoder")
def build_dual_encoder(
    tokenizer: Tokenizer | None = None,
    embed_dim: int = 256,
    image_encoder: str = "cnn",
    text_encoder: str = "bigru",
    image_args: dict[str, Any] | None = None,
    text_args: dict[str, Any] | None = None,
) -> DualEncoder:
    """CLIP-style dual encoder from registered image and text encoders."""
    return DualEncoder(
        *build_towers(tokenizer, image_encoder, text_encoder, image_args, text_args), embed_dim
    )


def build_towers(
    tokenizer: Tokenizer | None,
    image_encoder: str,
    text_encoder: str,
    image_args: dict[str, Any] | None = None,
    text_args: dict[str, Any] | None = None,
) -> tuple[nn.Module, nn.Module]:
    """The registered image and text encoders of a model (the text one with the tokenizer
    unless it brings its own)."""
    img = ENCODERS.create(image_encoder, **(image_args or {}))
    return img, build_text_encoder(text_encoder, tokenizer, text_args)


def build_text_encoder(
    name: str, tokenizer: Tokenizer | None, args: dict[str, Any] | None = None
) -> nn.Module:
    """A registered text encoder, given the tokenizer unless it brings its own (MiniLM)."""
    out: nn.Module = ENCODERS.create(name, **_text_kwargs(name, tokenizer, args or {}))
    return out
