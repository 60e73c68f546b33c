"""Contrastive (pairwise margin) loss, Hadsell, Chopra & LeCun 2006, across two modalities.

With distances ``d_ij = ||a_i - b_j||_2`` (optionally of L2-normalised embeddings), positive
pairs ``P`` (the diagonal, or equal labels) and negative pairs ``N`` (all others):

    L = mean_{(i,j) in P} [d_ij - m_pos]_+^p  +  mean_{(i,j) in N} [m_neg - d_ij]_+^p

``p = 2`` and ``m_pos = 0`` is Hadsell et al.'s form (without its factor 1/2); ``p = 1`` is
pytorch-metric-learning's ``ContrastiveLoss`` with ``LpDistance`` and ``MeanReducer``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.losses._common import make_positive_mask
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import check_paired_batch


def contrastive(
    a: torch.Tensor,
    b: torch.Tensor,
    margin: float = 1.0,
    pos_margin: float = 0.0,
    power: float = 2.0,
    normalize: bool = True,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pull positive pairs within ``pos_margin``, push negatives beyond ``margin``.

    Args:
        a, b: ``(N, D)`` paired embeddings.
        margin: ``m_neg`` (> 0).
        pos_margin: ``m_pos`` (>= 0, below ``margin``).
        power: ``p`` (> 0).
        normalize: L2-normalise the embeddings first.
        labels: optional ``(N,)`` classes; equal labels are positive pairs.

    Example:
        >>> a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> float(contrastive(a, a, margin=1.0, normalize=False))  # d(neg) = sqrt 2 > 1
        0.0
    """
    check_paired_batch(a, b, "mean", "contrastive")
    if not margin > 0:  # NaN too
        raise ValueError(f"margin must be > 0, got {margin}")
    if not 0 <= pos_margin < margin:
        raise ValueError(f"pos_margin must be in [0, margin), got {pos_margin}")
    if power <= 0:
        raise ValueError(f"power must be > 0, got {power}")
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    d = torch.cdist(a, b)
    pos = make_positive_mask(a.shape[0], a.device, labels)
    pos_loss = (d[pos] - pos_margin).clamp_min(0).pow(power).mean()
    neg = ~pos
    neg_loss = (margin - d[neg]).clamp_min(0).pow(power).mean() if neg.any() else d.sum() * 0
    return pos_loss + neg_loss


@LOSSES.register("contrastive")
class ContrastiveLoss(nn.Module):
    """Pairwise margin contrastive loss (Hadsell, Chopra & LeCun 2006) across modalities."""

    def __init__(
        self,
        margin: float = 1.0,
        pos_margin: float = 0.0,
        power: float = 2.0,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if not margin > 0:  # NaN too
            raise ValueError(f"margin must be > 0, got {margin}")
        self.margin, self.pos_margin, self.power, self.normalize = (
            margin,
            pos_margin,
            power,
            normalize,
        )

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        loss = contrastive(a, b, self.margin, self.pos_margin, self.power, self.normalize, labels)
        return LossOutput(loss)
