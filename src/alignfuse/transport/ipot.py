"""Exact optimal transport by the inexact proximal point method (IPOT, Xie et al. 2019), and
UNITER's word-region alignment (WRA, Chen et al. 2020) built on it.

IPOT solves ``min_P <P, C>`` over plans with marginals ``a`` and ``b`` by proximal steps
``P_{t+1} = argmin <P, C> + beta KL(P | P_t)``, each approximated by ``inner`` Sinkhorn
scalings of ``G * P_t`` with ``G = exp(-C / beta)``. Unlike entropic OT it converges to the
*exact* transport cost as the steps go on; ``beta`` sets the step, not a bias. UNITER runs 50
steps with ``beta = 0.5`` and one inner scaling on cosine distances between words and
regions.

WRA: the OT distance between a pair's contextual word and region states, with cost
``1 - cos(w_i, v_j)`` and uniform weights over the non-padded tokens; the plan is computed
without gradients (as in UNITER), so the gradient of the distance with respect to the
states flows through the cost alone. The loss pulls positive pairs together and pushes
negatives apart: ``(sum_pos d - sum_neg d) / pairs``.

Example:
    >>> import torch
    >>> cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> res = ipot(None, None, cost)         # the exact optimum: 0, the identity plan
    >>> round(float(res.cost), 6), res.plan.round(decimals=3).tolist()
    (0.0, [[0.5, 0.0], [0.0, 0.5]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignfuse.losses.token_wise import _check_tokens
from alignfuse.transport.sinkhorn import check_problem


@dataclass
class IPOTResult:
    """``plan`` ``(B, n, m)``, transport ``cost`` ``<P, C>`` ``(B,)`` (unbatched inputs give
    unbatched outputs), ``marginal_error``: L1 error of the plan's row and column sums."""

    plan: torch.Tensor
    cost: torch.Tensor
    marginal_error: torch.Tensor


def ipot(
    a: Any,
    b: Any,
    cost: Any,
    *,
    beta: float = 0.5,
    max_iter: int = 50,
    inner: int = 1,
) -> IPOTResult:
    """Exact OT between weights ``a`` and ``b`` (``None``: uniform; zeros allowed, e.g. for
    padding) under ``cost`` ``(n, m)`` / ``(B, n, m)`` by ``max_iter`` proximal steps.

    ``cost / beta`` must stay below ~700 in float64 (~80 in float32), or ``exp(-C / beta)``
    underflows: scale the cost or raise ``beta``. The plan is computed without gradients;
    the returned ``cost`` ``<P, C>`` is differentiable in ``C`` with ``P`` held fixed (at
    the optimum, the gradient of the OT value: WRA's "plan without gradient")."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if isinstance(inner, bool) or not isinstance(inner, int) or inner < 1:
        raise ValueError(f"inner must be a positive integer, got {inner!r}")
    wa, wb, c, single = check_problem(a, b, cost, beta, "cost")
    wa = wa / wa.sum(-1, keepdim=True)
    wb = wb / wb.sum(-1, keepdim=True)
    limit = -math.log(torch.finfo(c.dtype).tiny) * 0.9
    if float(c.detach().max() - c.detach().min()) / beta > limit:
        raise ValueError(
            f"cost / beta spans more than {limit:.0f}: exp(-cost / beta) would underflow; "
            "scale the cost or raise beta"
        )
    with torch.no_grad():
        cd = c.detach()  # the iterations never build a graph
        g = torch.exp(-(cd - cd.amin((-2, -1), keepdim=True)) / beta)
        plan = wa[:, :, None] * wb[:, None, :]
        sigma = torch.ones_like(wb)
        for _ in range(max_iter):
            q = g * plan
            for _ in range(inner):
                delta = _safe_div(wa, torch.einsum("bnm,bm->bn", q, sigma))
                sigma = _safe_div(wb, torch.einsum("bnm,bn->bm", q, delta))
            plan = delta[:, :, None] * q * sigma[:, None, :]
        err = (plan.sum(-1) - wa).abs().sum(-1) + (plan.sum(-2) - wb).abs().sum(-1)
    total = (plan * c).sum((-2, -1))
    if single:
        return IPOTResult(plan[0], total[0], err[0])
    return IPOTResult(plan, total, err)


def _safe_div(w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``w / d`` with 0 where ``w`` is 0 (padding), whatever ``d``."""
    return torch.where(w > 0, w / d.clamp_min(torch.finfo(d.dtype).tiny), torch.zeros_like(w))


def word_region_distance(
    words: torch.Tensor,
    regions: torch.Tensor,
    word_mask: torch.Tensor | None = None,
    region_mask: torch.Tensor | None = None,
    *,
    beta: float = 0.5,
    max_iter: int = 50,
) -> torch.Tensor:
    """UNITER's WRA distance per pair ``(B,)``: IPOT on ``1 - cos(word_i, region_j)``
    between ``words`` ``(B, L, d)`` and ``regions`` ``(B, R, d)``, uniform over the tokens
    the masks keep (``True`` = real token). The plan carries no gradient."""
    masks = [
        _check_tokens(words, word_mask, "words"),
        _check_tokens(regions, region_mask, "regions"),
    ]
    if len(words) != len(regions) or words.shape[-1] != regions.shape[-1]:
        raise ValueError(
            f"words {tuple(words.shape)} and regions {tuple(regions.shape)} must agree in batch and width"
        )
    cost = 1 - F.normalize(words, dim=-1) @ F.normalize(regions, dim=-1).transpose(1, 2)
    wa, wb = (m.to(cost.dtype) for m in masks)
    return ipot(wa, wb, cost, beta=beta, max_iter=max_iter).cost


def word_region_alignment_loss(distance: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """UNITER's WRA loss: ``(sum over positive pairs of d - sum over negatives of d) /
    pairs``, minimised (positives pulled together, negatives pushed apart)."""
    if distance.ndim != 1 or positive.shape != distance.shape:
        raise ValueError(
            f"distance and positive must be (B,) of one shape, got {tuple(distance.shape)} and {tuple(positive.shape)}"
        )
    sign = positive.to(torch.bool).to(distance.dtype) * 2 - 1
    return (sign * distance).sum() / len(distance)
