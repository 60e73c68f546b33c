"""Structure-preserving (quadruplet-style) loss, Wang, Li & Lazebnik 2016 ("Learning Deep
Structure-Preserving Image-Text Embeddings").

Bidirectional cross-modal ranking plus within-modality neighbourhood constraints. With
Euclidean distances, margin ``m``, cross-modal positives ``P(i)`` (the pair, or equal labels)
and within-modality neighbours ``N(i)`` (other items with the same label):

    L = lambda_ab * T(d(a, b), P) + lambda_ba * T(d(b, a), P^T)
        + lambda_aa * T(d(a, a), N) + lambda_bb * T(d(b, b), N)

    T(d, Q) = mean over (i, j, k) with j in Q(i), k not in Q(i) (k != i) of [m + d_ij - d_ik]_+

Without labels the within-modality terms have no neighbours and vanish. Memory is
``O(N^3)`` (all triplets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.losses._common import make_positive_mask
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import check_paired_batch


def _triplet_term(
    d: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float
) -> torch.Tensor:
    valid = pos[:, :, None] & neg[:, None, :]  # [i, j, k]
    if not valid.any():
        return d.sum() * 0
    viol = (margin + d[:, :, None] - d[:, None, :]).clamp_min(0)
    return viol[valid].mean()


def structure_preserving(
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor | None = None,
    margin: float = 0.1,
    cross_weights: tuple[float, float] = (1.0, 1.0),
    within_weights: tuple[float, float] = (0.1, 0.1),
    normalize: bool = True,
) -> torch.Tensor:
    """Bidirectional ranking plus within-modality structure terms (see module docstring).

    Example:
        >>> a = torch.eye(3)
        >>> float(structure_preserving(a, a, margin=0.5))  # d(pos)=0, d(neg)=sqrt 2
        0.0
    """
    check_paired_batch(a, b, "mean", "structure_preserving")
    if not margin > 0:  # NaN too
        raise ValueError(f"margin must be > 0, got {margin}")
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    n = a.shape[0]
    pos = make_positive_mask(n, a.device, labels)
    eye = torch.eye(n, dtype=torch.bool, device=a.device)
    d_ab = torch.cdist(a, b)
    loss = cross_weights[0] * _triplet_term(d_ab, pos, ~pos, margin)
    loss = loss + cross_weights[1] * _triplet_term(d_ab.T, pos.T, ~pos.T, margin)
    if labels is not None:
        neigh = pos & ~eye
        far = ~pos
        loss = loss + within_weights[0] * _triplet_term(torch.cdist(a, a), neigh, far, margin)
        loss = loss + within_weights[1] * _triplet_term(torch.cdist(b, b), neigh, far, margin)
    return loss


@LOSSES.register("quadruplet")
class StructurePreservingLoss(nn.Module):
    """Structure-preserving bidirectional ranking with within-modality neighbourhood
    constraints from labels (Wang, Li & Lazebnik 2016)."""

    def __init__(
        self,
        margin: float = 0.1,
        cross_weights: tuple[float, float] = (1.0, 1.0),
        within_weights: tuple[float, float] = (0.1, 0.1),
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if not margin > 0:  # NaN too
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin, self.normalize = margin, normalize
        self.cross_weights = (float(cross_weights[0]), float(cross_weights[1]))
        self.within_weights = (float(within_weights[0]), float(within_weights[1]))

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        loss = structure_preserving(
            a,
            b,
            labels,
            self.margin,
            self.cross_weights,
            self.within_weights,
            self.normalize,  # type: ignore[arg-type]
        )
        return LossOutput(loss)
