"""Image-text matching (ITM) with similarity-weighted hard negatives, as ALBEF (Li et al.
2021, "Align before Fuse").

A joint head scores whether ``(a_i, b_j)`` match. Each batch of ``N`` pairs gives ``N``
positives and ``2N`` negatives: for every ``a_i`` a ``b_j`` (``j`` not a positive of ``i``) drawn
with probability ``softmax_j(S_ij)``, and for every ``b_j`` an ``a_i`` drawn with probability
``softmax_i(S_ij)``, where ``S`` is the (detached) contrastive similarity matrix. So
negatives that the dual encoder finds similar are shown to the matcher more often. The
loss is the binary cross-entropy (2-way softmax) over the ``3N`` pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.losses._common import make_positive_mask
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES


def sample_hard_negatives(
    sims: torch.Tensor,
    positives: torch.Tensor,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of one negative ``b`` per row and one negative ``a`` per column of ``sims``,
    drawn with probability ``softmax`` of the similarity over the non-positives."""
    s = sims.detach().float().masked_fill(positives, float("-inf"))
    if torch.isinf(s).all(1).any() or torch.isinf(s).all(0).any():
        raise ValueError("some item has no negative in the batch (all pairs are positives)")
    neg_b = torch.multinomial(s.softmax(1), 1, generator=generator).squeeze(1)
    neg_a = torch.multinomial(s.T.softmax(1), 1, generator=generator).squeeze(1)
    return neg_b, neg_a


def matching(
    head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    a: torch.Tensor,
    b: torch.Tensor,
    sims: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    positive_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ITM loss with hard negatives.

    Args:
        head: maps paired inputs ``(M, ...)``, ``(M, ...)`` to ``(M, 2)`` logits
            (index 1 = match).
        a, b: ``(N, ...)`` inputs of the head (embeddings, token sequences, ...).
        sims: ``(N, N)`` similarities that weight the negatives (detached).
        labels: optional classes; pairs of equal labels are never drawn as negatives.
        positive_mask: or an ``(N, N)`` bool mask of the pairs never drawn as negatives
            (it must mark the diagonal).

    Returns:
        ``(loss, logits (3N, 2), targets (3N,))``.
    """
    n = a.shape[0]
    if b.shape[0] != n or sims.shape != (n, n):
        raise ValueError(
            f"a, b and sims disagree: {a.shape[0]}, {b.shape[0]} rows, sims {tuple(sims.shape)}"
        )
    if n < 2:
        raise ValueError("matching needs a batch of at least 2 pairs (there are no negatives)")
    if not torch.isfinite(sims).all():
        raise ValueError("sims contains NaN or Inf")
    pos = make_positive_mask(n, sims.device, labels, positive_mask)
    neg_b, neg_a = sample_hard_negatives(sims, pos, generator)
    idx = torch.arange(n, device=a.device)
    # index_select, not a[idx]: its backward sums repeated rows in a fixed order (advanced
    # indexing's CPU backward accumulates them in a thread-dependent order)
    left = torch.cat([a, a, a.index_select(0, neg_a.to(a.device))])
    right = torch.cat([b, b.index_select(0, neg_b.to(b.device)), b])
    logits = head(left, right)
    if logits.shape != (3 * n, 2):
        raise ValueError(f"head must return (M, 2) logits, got {tuple(logits.shape)}")
    targets = torch.cat([torch.ones_like(idx), torch.zeros_like(idx), torch.zeros_like(idx)])
    return F.cross_entropy(logits, targets), logits, targets


class PairHead(nn.Module):
    """A small matching head on two vectors: MLP over ``[a, b, a * b, |a - b|]``."""

    def __init__(self, dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU(), nn.Linear(hidden, 2))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(torch.cat([a, b, a * b, (a - b).abs()], -1))
        return out


@LOSSES.register("matching")
class MatchingLoss(nn.Module):
    """Image-text matching with similarity-weighted hard negatives (ALBEF); on plain
    embeddings it trains its own :class:`PairHead`, or any head given."""

    def __init__(
        self, dim: int = 256, head: nn.Module | None = None, temperature: float = 0.07
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.head = head if head is not None else PairHead(dim)
        self.temperature = temperature

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        if a.ndim != 2 or b.ndim != 2:
            raise ValueError("MatchingLoss on (N, D) embeddings; pass token inputs to matching()")
        sims = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / self.temperature
        loss, logits, targets = matching(self.head, a, b, sims, labels)
        acc = float((logits.argmax(1) == targets).float().mean())
        return LossOutput(loss, {"itm_acc": acc})
