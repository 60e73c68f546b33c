"""Precomputed image features as an image tower (encoder ``precomputed``).

The field's region-feature releases (SCAN's and VSE++'s ``*_ims.npy``: ``N x 36 x 2048``
bottom-up-attention regions per image) let heads and interaction models train without
touching images. This encoder takes such features in place of images: ``tokens`` are the
regions, ``forward`` their mean (as VSE++'s precomputed-feature baseline averages them). A
model's own projection maps them to its joint space; load the data with the ``precomputed``
dataset (:mod:`alignfuse.data.precomputed`).
"""

from __future__ import annotations

import torch
from torch import nn

from alignfuse.registry import ENCODERS


@ENCODERS.register("precomputed")
class PrecomputedFeatures(nn.Module):
    """Region features ``(B, R, dim)`` (or one vector ``(B, dim)``) as an image tower.

    Args:
        dim: the features' size ``D``.
        normalize: L2-normalise each region first (SCAN's ``precomp_enc_type`` default does
            after its FC layer; off by default).

    Example:
        >>> import torch
        >>> tower = PrecomputedFeatures(dim=8)
        >>> tower(torch.ones(2, 36, 8)).shape, tower.tokens(torch.ones(2, 8)).shape
        (torch.Size([2, 8]), torch.Size([2, 1, 8]))
    """

    modality = "image"

    def __init__(self, dim: int, normalize: bool = False) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer (the features' size), got {dim!r}")
        self.out_dim, self.normalize = dim, normalize

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Regions ``(B, R, dim)``; a single vector per image is one region."""
        if features.ndim not in (2, 3) or features.shape[-1] != self.out_dim:
            raise ValueError(
                f"precomputed features must be (B, R, {self.out_dim}) or (B, {self.out_dim}), "
                f"got {tuple(features.shape)} (is the data images rather than features?)"
            )
        x = features if features.ndim == 3 else features[:, None]
        return nn.functional.normalize(x, dim=-1) if self.normalize else x

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.tokens(features).mean(1)

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` and ``tokens``."""
        tok = self.tokens(features)
        return tok.mean(1), tok
