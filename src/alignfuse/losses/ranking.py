"""Listwise ranking loss: Smooth-AP (Brown et al. 2020, "Smooth-AP: Smoothing the Path
Towards Large-Scale Image Retrieval"), in both retrieval directions.

For a query ``q`` (a row of the similarity matrix ``S``, or a column for the other
direction) with positives ``P`` and ``sg(x) = sigmoid(x / tau)``, the rank of item ``i``
among all items and among the positives are relaxed to

    R(i)   = 1 + sum_{j != i}        sg(s_qj - s_qi)
    R_P(i) = 1 + sum_{j in P, j != i} sg(s_qj - s_qi)

and ``AP_q = 1/|P| sum_{i in P} R_P(i) / R(i)``. The loss is ``1 - mean_q AP_q``, averaged over
the two directions. As ``tau -> 0`` this is exactly ``1 - mAP``.
"""

from __future__ import annotations

import torch
from torch import nn

from alignfuse.losses._common import make_positive_mask, reduce
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import Similarity, check_paired_batch, similarity_matrix


def smooth_ap(scores: torch.Tensor, positives: torch.Tensor, tau: float = 0.01) -> torch.Tensor:
    """Smooth-AP of each row of ``scores`` ``(Q, M)`` given a bool mask ``positives`` ``(Q, M)``
    (every row needs at least one positive). Returns ``(Q,)``."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if not positives.any(1).all():
        raise ValueError("every query needs at least one positive")
    diff = scores[:, None, :] - scores[:, :, None]  # [q, i, j] = s_qj - s_qi
    sg = torch.sigmoid(diff / tau)
    eye = torch.eye(scores.shape[1], dtype=torch.bool, device=scores.device)
    sg = sg.masked_fill(eye, 0.0)
    rank_all = 1.0 + sg.sum(2)
    rank_pos = 1.0 + (sg * positives[:, None, :].to(sg.dtype)).sum(2)
    pos = positives.to(scores.dtype)
    return (rank_pos / rank_all * pos).sum(1) / pos.sum(1)


def ranking(
    a: torch.Tensor,
    b: torch.Tensor,
    tau: float = 0.01,
    similarity: Similarity = "cosine",
    reduction: str = "mean",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1 - Smooth-AP``, averaged over a-to-b and b-to-a retrieval; per query with
    ``reduction="none"`` (``(N,)``: the mean of row ``i``'s and column ``i``'s loss).

    Memory is ``O(N^3)`` (every query compares every pair of items), as in the paper.

    Example:
        >>> a = torch.eye(4)
        >>> float(ranking(a, a, tau=1e-4))  # perfect ranking: AP = 1
        0.0
    """
    check_paired_batch(a, b, reduction, "ranking")
    s = similarity_matrix(a, b, similarity)
    pos = make_positive_mask(a.shape[0], a.device, labels)
    per = 1.0 - 0.5 * (smooth_ap(s, pos, tau) + smooth_ap(s.T, pos.T, tau))
    return reduce(per, reduction)


@LOSSES.register("ranking")
class RankingLoss(nn.Module):
    """Listwise Smooth-AP ranking loss (Brown et al. 2020), both retrieval directions."""

    def __init__(self, tau: float = 0.01, similarity: str = "cosine", reduction: str = "mean"):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau, self.similarity, self.reduction = tau, similarity, reduction

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        return LossOutput(ranking(a, b, self.tau, self.similarity, self.reduction, labels))
