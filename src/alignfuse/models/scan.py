"""SCAN as a model (Lee et al. 2018, "Stacked cross attention for image-text matching"): the
image tower's spatial tokens and the text tower's word features, each projected into one
space, scored pair by pair by stacked cross attention
(:class:`~alignfuse.interaction.scan.SCAN`), trained on the batch's score matrix with a
hinge-based triplet loss (the paper's, hardest negatives) or InfoNCE.

A *pairwise* model: it has no embedding per item, so training and evaluation use its score
matrix (``forward`` gives ``(B, B)`` for a batch, :meth:`SCANModel.score` any images against
any captions). The paper uses Faster R-CNN region features; here the regions are the CNN's
(or ViT's) spatial tokens of the image, as in the fusion benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.interaction.scan import SCAN
from alignfuse.models.dual_encoder import build_towers
from alignfuse.registry import MODELS


class SCANModel(nn.Module):
    """Token towers, linear projections into ``embed_dim`` and a SCAN scorer.

    Args:
        image_encoder: module with ``tokens(images) -> (B, R, out_dim)``.
        text_encoder: module with ``prepare(texts)`` and ``tokens(ids, lengths)``.
        embed_dim: width of the joint token space.
        scan_args: arguments of :class:`~alignfuse.interaction.scan.SCAN` (direction,
            aggregation, lambdas).

    Example:
        >>> tok = Tokenizer.build(["a red circle", "a blue square"])
        >>> model = build_scan(tok, embed_dim=16, image_args={"width": 4, "out_dim": 16})
        >>> sims = model(torch.rand(2, 3, 64, 64), model.prepare_text(["a red circle", "a square"]))
        >>> tuple(sims.shape)
        (2, 2)
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        embed_dim: int = 256,
        scan_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for what, enc in (("image", image_encoder), ("text", text_encoder)):
            if not callable(getattr(enc, "tokens", None)):
                raise ValueError(
                    f"SCAN needs a {what} encoder with per-token outputs (tokens()); "
                    f"{type(enc).__name__} has none"
                )
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.image_proj = nn.Linear(int(image_encoder.out_dim), embed_dim)  # type: ignore[arg-type]
        self.text_proj = nn.Linear(int(text_encoder.out_dim), embed_dim)  # type: ignore[arg-type]
        self.scan = SCAN(**(scan_args or {}))
        self.embed_dim = embed_dim

    def prepare_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Turn strings into the text encoder's input tensors (runs in the data loader)."""
        out: dict[str, torch.Tensor] = self.text_encoder.prepare(texts)  # type: ignore[operator]
        return out

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images to projected region tokens ``(B, R, embed_dim)``."""
        out: torch.Tensor = self.image_proj(self.image_encoder.tokens(images))  # type: ignore[operator]
        return out

    def text_tokens(self, prepared: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepared text to projected word tokens ``(B, L, embed_dim)`` and their mask."""
        ids, lengths = prepared["ids"], prepared["lengths"]
        words = self.text_proj(self.text_encoder.tokens(ids, lengths))  # type: ignore[operator]
        mask = (
            torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        )
        return words, mask

    def score(
        self, regions: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor
    ) -> torch.Tensor:
        """SCAN similarities ``(n_images, n_captions)`` of projected tokens."""
        out: torch.Tensor = self.scan(regions, words, None, word_mask)
        return out

    def forward(self, images: torch.Tensor, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        """The ``(B, B)`` score matrix of a batch (pairs on the diagonal)."""
        return self.score(self.image_tokens(images), *self.text_tokens(prepared))


@MODELS.register("scan")
def build_scan(
    tokenizer: Tokenizer | None = None,
    embed_dim: int = 256,
    image_encoder: str = "cnn",
    text_encoder: str = "bigru",
    image_args: dict[str, Any] | None = None,
    text_args: dict[str, Any] | None = None,
    scan_args: dict[str, Any] | None = None,
) -> SCANModel:
    """SCAN image-text matcher (Lee et al. 2018) from registered encoders."""
    if text_encoder == "minilm":
        raise ValueError("SCAN needs word features: text_encoder 'bigru' or 'transformer'")
    img, txt = build_towers(tokenizer, image_encoder, text_encoder, image_args, text_args)
    return SCANModel(img, txt, embed_dim, scan_args)
