"""Focal loss (Lin et al. 2017, "Focal Loss for Dense Object Detection"): binary cross-entropy
with each example's term scaled down by how well it is already classified, so the many easy
negatives of a heavily imbalanced problem do not swamp the few positives. RESDSQL trains
its schema-item classifier with it (Li et al. 2023).

For a logit ``z`` with probability ``p = sigmoid(z)`` and label ``y in {0, 1}``::

    p_t = p if y = 1 else 1 - p
    alpha_t = alpha if y = 1 else 1 - alpha
    FL = -alpha_t (1 - p_t)^gamma log(p_t)

``gamma = 0`` and ``alpha = 0.5`` give half the binary cross-entropy; a negative ``alpha``
weighs both classes 1 (torchvision's convention). ``log p_t`` is computed as ``-BCE-with-logits`` (stable for any logit).

Example:
    >>> z = torch.tensor([3.0, -2.0, 0.5])
    >>> y = torch.tensor([1.0, 0.0, 0.0])
    >>> round(float(focal_loss(z, y, alpha=-1, gamma=0.0)), 4)  # = BCE
    0.3832
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.losses._common import make_positive_mask
from alignfuse.losses.candidates import check_candidates
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import Similarity, check_paired_batch, similarity_matrix


def _check_hyper(alpha: float, gamma: float) -> None:
    if not alpha <= 1:  # NaN too
        raise ValueError(f"alpha must be in [0, 1], or negative for no class weights, got {alpha}")
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma}")


def focal_terms(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """The focal loss of every element of ``logits`` against the binary ``targets`` (same
    shape), unreduced."""
    _check_hyper(alpha, gamma)
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {tuple(logits.shape)}, got {tuple(targets.shape)}"
        )
    y = targets.to(logits.dtype)
    if ((y != 0) & (y != 1)).any():
        raise ValueError("targets must be 0 or 1")
    ce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # -log p_t
    p_t = torch.exp(-ce)
    out = ce * (1 - p_t) ** gamma if gamma else ce
    if alpha >= 0:
        out = out * (alpha * y + (1 - alpha) * (1 - y))
    return out


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Focal loss of ``logits`` against binary ``targets``, averaged (``"mean"``) or summed
    (``"sum"``) over the elements."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    terms = focal_terms(logits, targets, alpha, gamma)
    return terms.mean() if reduction == "mean" else terms.sum()


def candidate_focal(
    scores: torch.Tensor,
    positive: torch.Tensor,
    valid: torch.Tensor | None = None,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Focal loss of each query's candidates as binary decisions (``scores`` are logits;
    positives label 1), averaged over every valid candidate of the queries that hold a
    positive."""
    positive, valid, rows = check_candidates(scores, positive, valid)
    terms = focal_terms(scores[rows], positive, alpha, gamma)
    return terms[valid].mean()


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Focal loss of binary match decisions, on logits ``scale * score + bias``.

    ``forward(a, b)``: every pair of a batch of paired embeddings is a decision (the
    diagonal, or equal ``labels``, positive), its score the pair's similarity, as SigLIP
    frames it (Zhai et al. 2023; use ``scale=10, bias=-10`` there). ``from_candidates``:
    each query's candidates (a question's schema items), their scores the logits of a
    cross-encoder (``scale=1, bias=0``, the defaults) or similarities.

    Args:
        alpha: weight of the positive class (``1 - alpha`` for negatives); negative: none.
            Lin et al. use 0.25 for detection (the default); RESDSQL 0.75 for schema items.
        gamma: focusing exponent (2 in both papers; 0 is weighted cross-entropy).
        scale, bias: the fixed affine map from scores to logits.
        similarity: ``cosine`` or ``dot`` (``forward``).
    """

    def __init__(
        self,
        alpha: float = 0.25,
        gamma: float = 2.0,
        scale: float = 1.0,
        bias: float = 0.0,
        similarity: Similarity = "cosine",
    ) -> None:
        super().__init__()
        _check_hyper(alpha, gamma)
        if not (scale > 0 and math.isfinite(scale)) or not math.isfinite(bias):
            raise ValueError(f"scale must be finite and > 0 and bias finite, got {scale}, {bias}")
        self.alpha, self.gamma = alpha, gamma
        self.scale, self.bias, self.similarity = scale, bias, similarity

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        """Focal loss over the ``N x N`` pairs of paired embeddings, averaged over pairs."""
        check_paired_batch(a, b, "mean", "focal")
        logits = similarity_matrix(a, b, self.similarity) * self.scale + self.bias
        pos = make_positive_mask(a.shape[0], a.device, labels, None)
        return LossOutput(focal_loss(logits, pos, self.alpha, self.gamma))

    def from_candidates(
        self, scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None
    ) -> LossOutput:
        """Each query's candidates as binary decisions (:func:`candidate_focal`)."""
        logits = scores * self.scale + self.bias
        return LossOutput(candidate_focal(logits, positive, valid, self.alpha, self.gamma))
