"""Bidirectional triplet ranking loss: sum over negatives (VSE0) or hardest negative (VSE++).

With similarities ``s(i, j) = <a_i, b_j>`` of ``N`` matched pairs and margin ``alpha``
(Faghri et al. 2018, "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives"):

    sum:      L_i = sum_{j != i} [alpha - s(i,i) + s(i,j)]_+ + [alpha - s(i,i) + s(j,i)]_+
    hardest:  L_i = max_{j != i} [alpha - s(i,i) + s(i,j)]_+ + max_{j != i} [alpha - s(i,i) + s(j,i)]_+
"""

from __future__ import annotations

import torch
from torch import nn

from alignfuse.losses._common import make_positive_mask, reduce
from alignfuse.losses.candidates import candidate_triplet
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import (
    Similarity,
    check_paired_batch,
    check_similarity,
    similarity_matrix,
)

MININGS = ("sum", "hardest", "semihard")


def triplet(
    a: torch.Tensor,
    b: torch.Tensor,
    margin: float = 0.2,
    mining: str = "sum",
    similarity: Similarity = "cosine",
    reduction: str = "sum",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional hinge triplet loss over in-batch negatives.

    Args:
        a: ``(N, D)`` anchors of one modality (images, say).
        b: ``(N, D)`` paired embeddings of the other modality.
        margin: hinge margin ``alpha`` (> 0).
        mining: ``sum`` over all negatives (VSE0), ``hardest`` negative (VSE++), or
            ``semihard``: the hardest negative that still scores below the positive
            (FaceNet, Schroff et al. 2015), the hardest one where there is none.
        similarity: ``cosine`` or ``dot``.
        reduction: ``sum`` (as VSE++), ``mean`` over pairs, or ``none`` (per pair).
        labels: optional ``(N,)`` classes; pairs with equal labels are never negatives.

    Example:
        >>> a = torch.eye(2); b = torch.eye(2)
        >>> float(triplet(a, b, margin=0.5))  # s(i,i)=1, s(i,j)=0: no violation
        0.0
    """
    check_paired_batch(a, b, reduction, "triplet")
    if not margin > 0:  # NaN too
        raise ValueError(f"margin must be > 0, got {margin}")
    if mining not in MININGS:
        raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")
    return triplet_from_similarity(
        similarity_matrix(a, b, similarity), margin, mining, reduction, labels
    )


def triplet_from_similarity(
    sims: torch.Tensor,
    margin: float = 0.2,
    mining: str = "sum",
    reduction: str = "sum",
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bidirectional triplet loss on a precomputed ``(N, N)`` similarity matrix (pairs on
    the diagonal), e.g. SCAN's cross-attention scores. Arguments as :func:`triplet`."""
    check_similarity(sims, reduction, "triplet")
    if not margin > 0:  # NaN too
        raise ValueError(f"margin must be > 0, got {margin}")
    if mining not in MININGS:
        raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")
    s = sims
    pos = s.diagonal()
    not_neg = make_positive_mask(s.shape[0], s.device, labels)
    cost_b = (margin - pos[:, None] + s).clamp_min(0).masked_fill(not_neg, 0)  # a_i vs b_j
    cost_a = (margin - pos[None, :] + s).clamp_min(0).masked_fill(not_neg, 0)  # b_j vs a_i
    if mining == "hardest":
        per = cost_b.max(1).values + cost_a.max(0).values
    elif mining == "semihard":
        per = _semihard(s, pos[:, None], not_neg, cost_b, 1) + _semihard(
            s, pos[None, :], not_neg, cost_a, 0
        )
    else:
        per = cost_b.sum(1) + cost_a.sum(0)
    return reduce(per, reduction)


def _semihard(
    s: torch.Tensor, pos: torch.Tensor, not_neg: torch.Tensor, cost: torch.Tensor, dim: int
) -> torch.Tensor:
    """Cost of the hardest negative scoring below the positive (the hardest overall where no
    negative does), along ``dim``."""
    low = float("-inf")
    below = (s < pos) & ~not_neg
    masked = s.masked_fill(~below, low)
    pick_semi = masked.argmax(dim)
    pick_hard = s.masked_fill(not_neg, low).argmax(dim)
    pick = torch.where(below.any(dim), pick_semi, pick_hard)
    return cost.gather(dim, pick.unsqueeze(dim)).squeeze(dim)


@LOSSES.register("triplet")
class TripletLoss(nn.Module):
    """Bidirectional triplet ranking loss; ``mining="hardest"`` is VSE++ (Faghri et al. 2018).

    With ``mining="hardest"`` and ``sum_warmup=N``, the first ``N`` training calls use the sum
    over negatives, then the hardest negative: the warm-up of VSE-infinity (Chen et al. 2021),
    which keeps max-violation training from collapsing (every similarity equal) when the towers
    start from random weights. The call counter is a buffer, so it is checkpointed and resumed.
    """

    num_calls: torch.Tensor

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "sum",
        similarity: Similarity = "cosine",
        reduction: str = "sum",
        sum_warmup: int = 0,
    ) -> None:
        super().__init__()
        if not margin > 0:  # NaN too
            raise ValueError(f"margin must be > 0, got {margin}")
        if mining not in MININGS:
            raise ValueError(f"mining must be one of {MININGS}, got {mining!r}")
        if sum_warmup < 0:
            raise ValueError(f"sum_warmup must be >= 0, got {sum_warmup}")
        self.margin, self.mining = margin, mining
        self.similarity, self.reduction = similarity, reduction
        self.sum_warmup = sum_warmup
        self.register_buffer("num_calls", torch.zeros((), dtype=torch.long))

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        mining = self._mining()
        loss = triplet(a, b, self.margin, mining, self.similarity, self.reduction, labels)
        return LossOutput(loss, {"hardest": float(mining == "hardest")})

    def from_similarity(self, sims: torch.Tensor) -> LossOutput:
        """The same loss (and warm-up) on a model's own ``(N, N)`` similarity matrix (pairs
        on the diagonal), e.g. SCAN's cross-attention scores."""
        mining = self._mining()
        loss = triplet_from_similarity(sims, self.margin, mining, self.reduction)
        return LossOutput(loss, {"hardest": float(mining == "hardest")})

    def from_candidates(
        self, scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None
    ) -> LossOutput:
        """The triplet loss (and warm-up) of each query's positives against its own
        candidates (:func:`~alignfuse.losses.candidates.candidate_triplet`; ``semihard``
        mining is not defined there)."""
        mining = self._mining()
        if mining == "semihard":
            raise ValueError("from_candidates supports mining 'sum' or 'hardest', not 'semihard'")
        loss = candidate_triplet(scores, positive, valid, self.margin, mining, self.reduction)
        return LossOutput(loss, {"hardest": float(mining == "hardest")})

    def _mining(self) -> str:
        """This call's mining (the sum during the warm-up), counting training calls."""
        mining = self.mining
        if self.training and torch.is_grad_enabled():
            if int(self.num_calls) < self.sum_warmup:
                mining = "sum"
            self.num_calls += 1
        return mining
