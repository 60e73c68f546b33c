"""Soft-DTW (Cuturi & Blondel 2017): a differentiable relaxation of DTW.

``soft_dtw`` replaces DTW's minimum by the soft minimum ``-gamma log sum exp(-a / gamma)``
over the cost matrix (squared Euclidean by default, as in the paper and tslearn; the value is
*not* square-rooted). Its gradient with respect to the cost matrix is the expected alignment
matrix, returned by :func:`soft_dtw_alignment`. As ``gamma -> 0`` soft-DTW tends to the summed
cost of the best DTW path.

On the CPU, forward and backward run in compiled kernels with the paper's O(nm) backward
recursion (no autograd tape over the recursion); elsewhere the recursion runs in torch on the
input's device.

Example:
    >>> import torch
    >>> from alignfuse.temporal import SoftDTWLoss
    >>> x = torch.randn(4, 20, 3, requires_grad=True)
    >>> y = torch.randn(4, 25, 3)
    >>> loss = SoftDTWLoss(gamma=0.1, normalize=True)(x, y)
    >>> loss.shape
    torch.Size([])
    >>> loss.backward()
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import torch
from torch import nn

from alignfuse.temporal import _kernels as K
from alignfuse.temporal._input import as_batch, check_gamma, pair_up
from alignfuse.temporal._wavefront import wavefront
from alignfuse.temporal.dtw import Metric, _check_backend, pairwise_cost


def _chunking(b: int) -> tuple[int, int]:
    """Chunks and pairs per chunk: one chunk per thread, pairs rounded up to a multiple of 8
    (an AVX-512 vector of doubles)."""
    threads = max(1, min(numba.get_num_threads(), b))
    per = -(-b // threads)
    per = -(-per // 8) * 8
    return -(-b // per), per


def _lengths(
    b: int, n: int, m: int, xl: torch.Tensor, yl: torch.Tensor
) -> tuple[np.ndarray, np.ndarray, int, int]:
    nc, per = _chunking(b)
    flat_x = np.full(nc * per, n, dtype=np.int64)
    flat_y = np.full(nc * per, m, dtype=np.int64)
    flat_x[:b], flat_y[:b] = xl.numpy(), yl.numpy()
    return flat_x.reshape(nc, per), flat_y.reshape(nc, per), nc, per


class _SoftDTWFunction(torch.autograd.Function):
    """Values ``(B,)`` of soft-DTW over cost matrices ``(B, n, m)``; numba forward/backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, cost: torch.Tensor, xl: torch.Tensor, yl: torch.Tensor, gamma: float
    ) -> torch.Tensor:
        b, n, m = cost.shape
        lx, ly, _, per = _lengths(b, n, m, xl, yl)
        # costs in the chunked, 1-based layout (C, n + 2, m + 2, P); padding pairs are zeros
        d = K.to_chunks(np.ascontiguousarray(cost.detach().cpu().numpy()), per)
        values, r = K.soft_forward(d, lx, ly, gamma)
        ctx.state = (d, r, lx, ly, gamma, b)
        ctx.device, ctx.dtype = cost.device, cost.dtype
        return torch.from_numpy(values.reshape(-1)[:b]).to(cost)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        d, r, lx, ly, gamma, b = ctx.state
        out = np.empty(
            (b, d.shape[1] - 2, d.shape[2] - 2),
            dtype=d.dtype if ctx.dtype == torch.float64 else np.float32,
        )
        scale = np.ascontiguousarray(grad.detach().cpu().double().numpy())
        K.soft_backward(d, r, lx, ly, gamma, scale, out)
        ge = torch.from_numpy(out).to(device=ctx.device, dtype=ctx.dtype)
        return ge, None, None, None


def _zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    if bool((lengths == x.shape[1]).all()):
        return x
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
    return x.masked_fill(~valid[..., None], 0.0)


def _soft_pair_values(
    x: torch.Tensor,
    y: torch.Tensor,
    xl: torch.Tensor,
    yl: torch.Tensor,
    gamma: float,
    how: str,
    metric: Metric,
) -> torch.Tensor:
    """Soft-DTW of paired series (padding zeroed first)."""
    # padding may hold anything (NaN included): zero it so no weight near a border is NaN
    x = _zero_padding(x, xl)
    y = _zero_padding(y, yl)
    return _soft_values(pairwise_cost(x, y, metric), xl, yl, gamma, how)


def _soft_values(
    cost: torch.Tensor, xl: torch.Tensor, yl: torch.Tensor, gamma: float, how: str
) -> torch.Tensor:
    if how == "numba":
        out: torch.Tensor = _SoftDTWFunction.apply(cost, xl, yl, gamma)  # type: ignore[no-untyped-call]
        return out
    return wavefront(cost, xl, yl, gamma)


def _prepare(
    x: Any,
    y: Any,
    gamma: float,
    x_lengths: Any,
    y_lengths: Any,
    x_mask: Any,
    y_mask: Any,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool, float, str]:
    g = check_gamma(gamma)
    xb = as_batch(x, "x", lengths=x_lengths, mask=x_mask)
    yb = as_batch(y, "y", lengths=y_lengths, mask=y_mask, batched=not xb.single)
    xb, yb = pair_up(xb, yb)
    how = _check_backend(backend, xb.values.device)
    return xb.values, yb.values, xb.lengths, yb.lengths, xb.single, g, how


def soft_dtw(
    x: Any,
    y: Any,
    *,
    gamma: float = 1.0,
    metric: Metric = "sqeuclidean",
    x_lengths: Any | None = None,
    y_lengths: Any | None = None,
    x_mask: Any | None = None,
    y_mask: Any | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Soft-DTW value of one pair of series or of each pair of two paired batches.

    Args:
        x, y: series ``(n,)`` / ``(n, d)`` or batches ``(B, n, d)`` paired row by row.
        gamma: smoothing, > 0; smaller is closer to DTW (and to its non-smoothness).
        metric: local cost (see :func:`alignfuse.temporal.pairwise_cost`).
        backend: ``"auto"`` (numba on the CPU, torch elsewhere), ``"numba"`` or ``"torch"``.

    Returns:
        A 0-d tensor for one pair, ``(B,)`` for batches; differentiable in ``x`` and ``y``.
    """
    xv, yv, xl, yl, single, g, how = _prepare(
        x, y, gamma, x_lengths, y_lengths, x_mask, y_mask, backend
    )
    out = _soft_pair_values(xv, yv, xl, yl, g, how, metric)
    return out[0] if single else out


def soft_dtw_alignment(
    x: Any,
    y: Any,
    *,
    gamma: float = 1.0,
    metric: Metric = "sqeuclidean",
    x_lengths: Any | None = None,
    y_lengths: Any | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected alignment matrix under the soft-DTW Gibbs distribution, and the value.

    ``A[i, j]`` is the probability that step ``i`` of ``x`` is matched to step ``j`` of ``y``
    (the gradient of soft-DTW with respect to the cost matrix). Returns ``(A, value)``:
    ``(n, m)`` and a 0-d tensor for one pair, ``(B, n, m)`` and ``(B,)`` for batches (zero
    outside each pair's valid lengths).
    """
    xv, yv, xl, yl, single, g, how = _prepare(
        x, y, gamma, x_lengths, y_lengths, None, None, backend
    )
    with torch.enable_grad():
        cost = pairwise_cost(xv.detach(), yv.detach(), metric).requires_grad_(True)
        values = _soft_values(cost, xl, yl, g, how)
        (a,) = torch.autograd.grad(values.sum(), cost)
    values = values.detach()
    return (a[0], values[0]) if single else (a, values)


def soft_dtw_divergence(
    x: Any,
    y: Any,
    *,
    gamma: float = 1.0,
    metric: Metric = "sqeuclidean",
    x_lengths: Any | None = None,
    y_lengths: Any | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Soft-DTW divergence ``sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2`` (Blondel et al. 2021).

    Non-negative for the squared Euclidean cost and zero when ``x == y``, unlike soft-DTW
    itself, which can be negative.
    """
    xv, yv, xl, yl, single, g, how = _prepare(
        x, y, gamma, x_lengths, y_lengths, None, None, backend
    )
    xy = _soft_pair_values(xv, yv, xl, yl, g, how, metric)
    xx = _soft_pair_values(xv, xv, xl, xl, g, how, metric)
    yy = _soft_pair_values(yv, yv, yl, yl, g, how, metric)
    out = xy - (xx + yy) / 2
    return out[0] if single else out


class SoftDTWLoss(nn.Module):
    """Soft-DTW between paired batches of series as a training loss.

    Args:
        gamma: smoothing (> 0).
        normalize: use the soft-DTW divergence (zero for identical series) instead of raw
            soft-DTW.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the pairs.
        metric: local cost.

    ``forward(x, y, x_lengths=None, y_lengths=None)`` takes batches ``(B, n, d)`` and
    ``(B, m, d)``.
    """

    def __init__(
        self,
        gamma: float = 1.0,
        *,
        normalize: bool = False,
        reduction: str = "mean",
        metric: Metric = "sqeuclidean",
    ) -> None:
        super().__init__()
        self.gamma = check_gamma(gamma)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.normalize = normalize
        self.reduction = reduction
        self.metric = metric

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_lengths: torch.Tensor | None = None,
        y_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        fn = soft_dtw_divergence if self.normalize else soft_dtw
        values = fn(
            x, y, gamma=self.gamma, metric=self.metric, x_lengths=x_lengths, y_lengths=y_lengths
        )
        if values.ndim == 0:
            values = values[None]
        if self.reduction == "mean":
            return values.mean()
        if self.reduction == "sum":
            return values.sum()
        return values

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, normalize={self.normalize}, reduction={self.reduction!r}"


__all__ = ["SoftDTWLoss", "soft_dtw", "soft_dtw_alignment", "soft_dtw_divergence"]
