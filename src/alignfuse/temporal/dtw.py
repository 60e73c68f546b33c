"""Dynamic time warping: values, paths, all-pairs matrices and subsequence search.

Conventions follow tslearn: with the default ``metric="sqeuclidean"`` the DTW value is the
square root of the summed squared Euclidean costs along the best path (so it equals the
Euclidean distance for equal-length series aligned one-to-one). With any other ``metric``
the value is the plain sum of that local cost along the path.

Global constraints: ``"sakoe_chiba"`` (a band of ``sakoe_chiba_radius`` cells around the
diagonal, widened by the length difference, as tslearn) and ``"itakura"`` (the parallelogram
of slopes ``itakura_max_slope`` and its inverse). A pair with no admissible path has value
``inf`` (possible only with a narrow Itakura parallelogram and very different lengths).

On the CPU the dynamic programme runs in compiled numba kernels (parallel over pairs); on
other devices (or with ``backend="torch"``) it runs in torch, one anti-diagonal at a time,
on the input's device. Values are differentiable on both paths: the gradient is that of the
summed cost along the optimal path.

Example:
    >>> import torch
    >>> from alignfuse.temporal import dtw, dtw_path
    >>> x = torch.tensor([0.0, 1.0, 2.0])
    >>> y = torch.tensor([0.0, 0.0, 1.0, 2.0, 2.0])
    >>> float(dtw(x, y))
    0.0
    >>> path, value = dtw_path(x, y)
    >>> path.tolist()
    [[0, 0], [0, 1], [1, 2], [2, 3], [2, 4]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from alignfuse.temporal import _kernels as K
from alignfuse.temporal._input import Batch, as_batch, constraint_code, pair_up
from alignfuse.temporal._wavefront import wavefront

Metric = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METRICS = ("sqeuclidean", "euclidean", "cityblock", "cosine")
BACKENDS = ("auto", "numba", "torch")


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, metric: Metric = "sqeuclidean") -> torch.Tensor:
    """Local cost matrices ``(B, n, m)`` between the steps of ``x`` ``(B, n, d)`` and ``y``
    ``(B, m, d)``.

    ``metric``: ``"sqeuclidean"``, ``"euclidean"``, ``"cityblock"`` (L1), ``"cosine"``
    (one minus cosine similarity) or a callable taking the two batches and returning the
    ``(B, n, m)`` costs (it must be non-negative).
    """
    if callable(metric):
        c = metric(x, y)
        if not isinstance(c, torch.Tensor) or tuple(c.shape) != (
            x.shape[0],
            x.shape[1],
            y.shape[1],
        ):
            raise ValueError(
                f"metric callable must return a tensor of shape "
                f"{(x.shape[0], x.shape[1], y.shape[1])}, got "
                f"{tuple(c.shape) if isinstance(c, torch.Tensor) else type(c).__name__}"
            )
        return c
    if metric == "sqeuclidean":
        if x.shape[-1] > 8:
            return _sq_gram(x, y)
        # few features: the exact difference form (no cancellation)
        return (x[:, :, None, :] - y[:, None, :, :]).pow(2).sum(-1)
    if metric == "euclidean":
        return torch.cdist(x, y)
    if metric == "cityblock":
        return torch.cdist(x, y, p=1)
    if metric == "cosine":
        xn = torch.nn.functional.normalize(x, dim=-1)
        yn = torch.nn.functional.normalize(y, dim=-1)
        return 1 - xn @ yn.transpose(1, 2)
    raise ValueError(f"metric must be one of {METRICS} or a callable, got {metric!r}")


def _sq_gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # |x|^2 + |y|^2 - 2 x.y, clamped at 0 against round-off
    base = x.pow(2).sum(-1)[:, :, None] + y.pow(2).sum(-1)[:, None, :]
    return torch.baddbmm(base, x, y.transpose(1, 2), alpha=-2).clamp_min(0)


def _check_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "numba" and device.type != "cpu":
        raise ValueError(f"backend='numba' runs on the CPU only; the inputs are on {device}")
    if backend == "auto":
        return "numba" if device.type == "cpu" else "torch"
    return backend


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float64)


def _finish(acc: torch.Tensor, metric: Metric) -> torch.Tensor:
    if metric != "sqeuclidean":
        return acc
    pos = acc > 0
    return torch.where(
        pos, acc.clamp_min(torch.finfo(acc.dtype).tiny).sqrt(), torch.zeros_like(acc)
    )


def _allowed(xb: Batch, yb: Batch, code: int, param: float) -> torch.Tensor | None:
    if code == 0:
        return None
    b, n, m = xb.values.shape[0], xb.n, yb.n
    mask = torch.zeros((b, n, m), dtype=torch.bool)
    for p in range(b):
        lo, hi = K.row_bounds(int(xb.lengths[p]), int(yb.lengths[p]), code, param)
        cols = torch.arange(m)[None, :]
        rows = (cols >= torch.from_numpy(lo)[:, None]) & (cols < torch.from_numpy(hi)[:, None])
        mask[p, : rows.shape[0]] = rows
    return mask.to(xb.values.device)


def _paths(
    r: np.ndarray, xl: torch.Tensor, yl: torch.Tensor, subsequence: bool
) -> list[np.ndarray]:
    return [
        K.backtrack(r[p], int(xl[p]), int(yl[p]), subsequence)
        if np.isfinite(_end_value(r[p], int(xl[p]), int(yl[p]), subsequence))
        else np.zeros((0, 2), dtype=np.int64)
        for p in range(r.shape[0])
    ]


def _end_value(r: np.ndarray, n: int, m: int, subsequence: bool) -> float:
    return float(r[n, 1 : m + 1].min()) if subsequence else float(r[n, m])


def _path_mask(
    paths: list[np.ndarray], shape: tuple[int, int, int], device: torch.device
) -> torch.Tensor:
    a = torch.zeros(shape, dtype=torch.bool)
    for p, path in enumerate(paths):
        if len(path):
            idx = torch.from_numpy(path)
            a[p, idx[:, 0], idx[:, 1]] = True
    return a.to(device)


def dtw(
    x: Any,
    y: Any,
    *,
    metric: Metric = "sqeuclidean",
    global_constraint: str | None = None,
    sakoe_chiba_radius: int | None = None,
    itakura_max_slope: float | None = None,
    x_lengths: Any | None = None,
    y_lengths: Any | None = None,
    x_mask: Any | None = None,
    y_mask: Any | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """DTW value of one pair of series, or of each pair of two paired batches.

    Args:
        x, y: series ``(n,)`` / ``(n, d)``, or batches ``(B, n, d)`` paired row by row.
        metric: local cost (see :func:`pairwise_cost`); ``"sqeuclidean"`` returns the square
            root of the summed costs, as tslearn and dtaidistance.
        global_constraint: ``None``, ``"sakoe_chiba"`` or ``"itakura"``.
        x_lengths, y_lengths / x_mask, y_mask: valid lengths of padded batches.
        backend: ``"auto"`` (numba on the CPU, torch elsewhere), ``"numba"`` or ``"torch"``.

    Returns:
        A 0-d tensor for one pair, a ``(B,)`` tensor for batches, in ``x``'s dtype and on
        its device; ``inf`` where no admissible path exists.
    """
    xb = as_batch(x, "x", lengths=x_lengths, mask=x_mask)
    yb = as_batch(y, "y", lengths=y_lengths, mask=y_mask, batched=not xb.single)
    xb, yb = pair_up(xb, yb)
    code, param = constraint_code(global_constraint, sakoe_chiba_radius, itakura_max_slope)
    how = _check_backend(backend, xb.values.device)
    xv, yv = xb.values, yb.values
    grad = torch.is_grad_enabled() and (xv.requires_grad or yv.requires_grad)
    if how == "numba" and metric == "sqeuclidean" and not grad:
        acc = K.dtw_sq_paired(_np(xv), _np(yv), xb.lengths.numpy(), yb.lengths.numpy(), code, param)
        out = _finish(torch.from_numpy(acc).to(xv.dtype), metric)
    else:
        cost = pairwise_cost(xv, yv, metric)
        if how == "numba":
            r = K.accumulate(_np(cost), xb.lengths.numpy(), yb.lengths.numpy(), code, param, False)
            paths = _paths(r, xb.lengths, yb.lengths, False)
            on_path = _path_mask(paths, tuple(cost.shape), cost.device)  # type: ignore[arg-type]
            acc = (cost * on_path).sum((1, 2))
            ends = r[np.arange(len(r)), xb.lengths.numpy(), yb.lengths.numpy()]
            acc = torch.where(
                torch.from_numpy(np.isfinite(ends)), acc, torch.full_like(acc, float("inf"))
            )
        else:
            acc = wavefront(cost, xb.lengths, yb.lengths, 0.0, _allowed(xb, yb, code, param))
        out = _finish(acc, metric)
    return out[0] if xb.single else out


def dtw_path(
    x: Any,
    y: Any,
    *,
    metric: Metric = "sqeuclidean",
    global_constraint: str | None = None,
    sakoe_chiba_radius: int | None = None,
    itakura_max_slope: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimal warping path of one pair and its DTW value.

    Returns:
        ``(path, value)``: ``path`` a ``(L, 2)`` int64 tensor of ``(i, j)`` index pairs from
        ``(0, 0)`` to ``(n - 1, m - 1)``; ``value`` as :func:`dtw`.

    Raises:
        ValueError: if the global constraint admits no path for these lengths.
    """
    xb = as_batch(x, "x", batched=False)
    yb = as_batch(y, "y", batched=False)
    xb, yb = pair_up(xb, yb)
    code, param = constraint_code(global_constraint, sakoe_chiba_radius, itakura_max_slope)
    cost = pairwise_cost(xb.values, yb.values, metric)
    r = K.accumulate(_np(cost), xb.lengths.numpy(), yb.lengths.numpy(), code, param, False)
    if not np.isfinite(r[0, xb.n, yb.n]):
        raise ValueError(
            f"global_constraint={global_constraint!r} admits no warping path between "
            f"lengths {xb.n} and {yb.n}; widen it (itakura_max_slope / sakoe_chiba_radius)"
        )
    path = torch.from_numpy(K.backtrack(r[0], xb.n, yb.n, False))
    c = cost[0]
    acc = c[path[:, 0].to(c.device), path[:, 1].to(c.device)].sum()
    return path, _finish(acc, metric)


def cdist_dtw(
    x: Any,
    y: Any | None = None,
    *,
    metric: Metric = "sqeuclidean",
    global_constraint: str | None = None,
    sakoe_chiba_radius: int | None = None,
    itakura_max_slope: float | None = None,
    x_lengths: Any | None = None,
    y_lengths: Any | None = None,
    backend: str = "auto",
    max_cells: int = 2**25,
) -> torch.Tensor:
    """DTW between every series of ``x`` ``(A, n, d)`` and every series of ``y`` ``(B, m, d)``.

    With ``y=None`` the symmetric matrix among the series of ``x`` (diagonal 0) is computed
    from its upper triangle. Non-default metrics and the torch backend build the cost
    matrices of at most ``max_cells`` cells at a time. Returns an ``(A, B)`` tensor (no
    gradient).
    """
    xb = as_batch(x, "x", lengths=x_lengths, batched=True)
    symmetric = y is None
    yb = xb if y is None else as_batch(y, "y", lengths=y_lengths, batched=True)
    if symmetric and y_lengths is not None:
        raise ValueError("y_lengths given without y")
    xb, yb = pair_up(xb, yb, paired=False)
    code, param = constraint_code(global_constraint, sakoe_chiba_radius, itakura_max_slope)
    how = _check_backend(backend, xb.values.device)
    a, b = xb.values.shape[0], yb.values.shape[0]
    if how == "numba" and metric == "sqeuclidean":
        acc = K.dtw_sq_cdist(
            _np(xb.values),
            _np(yb.values),
            xb.lengths.numpy(),
            yb.lengths.numpy(),
            code,
            param,
            symmetric,
        )
        return _finish(torch.from_numpy(acc).to(xb.values.dtype), metric)
    ii, jj = torch.meshgrid(torch.arange(a), torch.arange(b), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    if symmetric:
        keep = jj > ii
        ii, jj = ii[keep], jj[keep]
    out = torch.zeros(a, b, dtype=xb.values.dtype, device=xb.values.device)
    step = max(1, max_cells // (xb.n * yb.n))
    with torch.no_grad():
        for s in range(0, len(ii), step):
            bi, bj = ii[s : s + step], jj[s : s + step]
            vals = dtw(
                xb.values[bi.to(xb.values.device)],
                yb.values[bj.to(yb.values.device)],
                metric=metric,
                global_constraint=global_constraint,
                sakoe_chiba_radius=sakoe_chiba_radius,
                itakura_max_slope=itakura_max_slope,
                x_lengths=xb.lengths[bi],
                y_lengths=yb.lengths[bj],
                backend=how,
            )
            out[bi, bj] = vals
    if symmetric:
        out = out + out.T
    return out


def warping_path(
    cost: Any,
    *,
    global_constraint: str | None = None,
    sakoe_chiba_radius: int | None = None,
    itakura_max_slope: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The optimal warping path through a precomputed local cost matrix ``(n, m)``, and its
    summed cost. For costs that do not come from two series (e.g. negative log-probabilities
    of a matcher). Costs must be finite; they may be negative.

    Example:
        >>> import torch
        >>> path, total = warping_path(torch.tensor([[0.0, 5.0], [5.0, 0.0], [1.0, 0.0]]))
        >>> path.tolist(), float(total)
        ([[0, 0], [1, 1], [2, 1]], 0.0)
    """
    c = torch.as_tensor(cost)
    if not c.is_floating_point():
        c = c.double()
    if c.ndim != 2 or 0 in c.shape:
        raise ValueError(f"cost must be a non-empty (n, m) matrix, got shape {tuple(c.shape)}")
    if not torch.isfinite(c).all():
        raise ValueError("cost contains NaN or Inf")
    code, param = constraint_code(global_constraint, sakoe_chiba_radius, itakura_max_slope)
    n, m = c.shape
    lens_n, lens_m = np.array([n]), np.array([m])
    r = K.accumulate(_np(c[None]), lens_n, lens_m, code, param, False)
    if not np.isfinite(r[0, n, m]):
        raise ValueError(
            f"global_constraint={global_constraint!r} admits no warping path for {n} x {m}"
        )
    path = torch.from_numpy(K.backtrack(r[0], n, m, False))
    return path, c[path[:, 0].to(c.device), path[:, 1].to(c.device)].sum()


class SubsequenceMatch(NamedTuple):
    """Best match of a query inside a longer series: ``series[start:end]``."""

    value: torch.Tensor
    start: int
    end: int
    path: torch.Tensor


def subsequence_dtw(query: Any, series: Any, *, metric: Metric = "sqeuclidean") -> SubsequenceMatch:
    """Find the stretch of ``series`` that ``query`` matches best under DTW.

    The warping path must cover the whole query but may start and end anywhere in the series
    (Müller 2007, subsequence DTW). ``value`` is the DTW value of the query against
    ``series[start:end]`` (same convention as :func:`dtw`); ``path`` holds ``(i, j)`` pairs
    with ``j`` indexing ``series``.

    Example:
        >>> import torch
        >>> s = torch.tensor([5.0, 5.0, 0.0, 1.0, 2.0, 5.0])
        >>> m = subsequence_dtw(torch.tensor([0.0, 1.0, 2.0]), s)
        >>> (m.start, m.end, float(m.value))
        (2, 5, 0.0)
    """
    qb = as_batch(query, "query", batched=False)
    sb = as_batch(series, "series", batched=False)
    qb, sb = pair_up(qb, sb)
    cost = pairwise_cost(qb.values, sb.values, metric)
    r = K.accumulate(_np(cost), qb.lengths.numpy(), sb.lengths.numpy(), 0, 0.0, True)
    path = torch.from_numpy(K.backtrack(r[0], qb.n, sb.n, True))
    c = cost[0]
    acc = c[path[:, 0].to(c.device), path[:, 1].to(c.device)].sum()
    return SubsequenceMatch(_finish(acc, metric), int(path[0, 1]), int(path[-1, 1]) + 1, path)
