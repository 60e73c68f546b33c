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
    """Two towers keyed by modality, each with a linear projection into one shared
    ``embed_dim`` space of unit vectors (CLIP, VSE++; speech-text with ``modalities=("audio",
    "text")``).

    The towers are the modules ``<modality>_encoder`` and their projections
    ``<modality>_proj`` (``image_encoder``, ``text_proj``, ...). :meth:`encode` embeds either
    modality's inputs: a tensor, or a mapping of the tower's keyword arguments (what its
    ``prepare`` returns); :meth:`prepare` runs a tower's ``prepare`` (strings to token ids,
    waveforms to log-mel frames). ``encode_image``, ``encode_text`` and ``prepare_text`` are
    the image-text spellings of the same.

    Args:
        first: the first modality's tower (an image tower by default): a module with
            ``out_dim``, mapping its inputs to ``(B, out_dim)``.
        second: the second modality's tower (a text tower by default).
        embed_dim: width of the joint space.
        modalities: the two modalities' names.

    Example:
        >>> tok = Tokenizer.build(["a red circle"])
        >>> model = build_dual_encoder(tok, embed_dim=16)
        >>> img = model.encode_image(torch.rand(2, 3, 64, 64))
        >>> txt = model.encode("text", model.prepare("text", ["a red circle", "a circle"]))
        >>> img.shape, txt.shape, model.modalities
        (torch.Size([2, 16]), torch.Size([2, 16]), ('image', 'text'))
    """

    image_encoder: nn.Module
    text_encoder: nn.Module
    image_proj: nn.Linear
    text_proj: nn.Linear

    def __init__(
        self,
        first: nn.Module,
        second: nn.Module,
        embed_dim: int = 256,
        modalities: tuple[str, str] = ("image", "text"),
    ):
        super().__init__()
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        if len(modalities) != 2 or modalities[0] == modalities[1]:
            raise ValueError(f"modalities must name two different modalities, got {modalities!r}")
        self.modalities = tuple(modalities)
        towers = dict(zip(self.modalities, (first, second), strict=True))
        for m, tower in towers.items():  # towers first, then projections: a stable order
            self.add_module(f"{m}_encoder", tower)
        for m, tower in towers.items():
            self.add_module(f"{m}_proj", nn.Linear(int(tower.out_dim), embed_dim))  # type: ignore[arg-type]
        self.embed_dim = embed_dim

    def _check(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(
                f"modality must be one of {', '.join(self.modalities)}, got {modality!r}"
            )

    def encoder(self, modality: str) -> nn.Module:
        """The tower of ``modality``."""
        self._check(modality)
        return self.get_submodule(f"{modality}_encoder")

    def prepare(self, modality: str, *raw: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The tower's ``prepare`` (strings to token ids, waveforms to frames; runs in the
        data loader)."""
        out: dict[str, torch.Tensor] = self.encoder(modality).prepare(*raw, **kwargs)  # type: ignore[operator]
        return out

    def encode(self, modality: str, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, embed_dim)`` unit vectors of a batch of ``modality``."""
        tower = self.encoder(modality)
        feats = tower(**inputs) if isinstance(inputs, dict) else tower(inputs)
        proj = self.get_submodule(f"{modality}_proj")
        return F.normalize(proj(feats), dim=-1)

    def prepare_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Turn strings into the text encoder's input tensors (runs in the data loader)."""
        return self.prepare("text", texts)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` float images to ``(B, embed_dim)`` unit vectors."""
        return self.encode("image", images)

    def encode_text(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        """Prepared text tensors to ``(B, embed_dim)`` unit vectors."""
        return self.encode("text", prepared)

    def forward(
        self, first: torch.Tensor | dict[str, torch.Tensor], second: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both modalities' unit embeddings (image-text: ``(images, prepared text)``)."""
        return self.encode(self.modalities[0], first), self.encode(self.modalities[1], second)


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
