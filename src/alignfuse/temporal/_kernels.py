"""Compiled CPU kernels (numba) behind the temporal functions.

Every kernel works on float64 numpy arrays and on the valid prefix of padded inputs
(``n``/``m`` rows of ``(N, ...)``/``(M, ...)`` buffers). The global constraint is passed as
``code`` (0 none, 1 Sakoe-Chiba with ``param`` = radius, 2 Itakura with ``param`` = maximum
slope) and turned into per-row column bounds ``[lo[i], hi[i])``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

INF = np.inf


@njit(cache=True, nogil=True)
def _round2(v: float) -> float:
    # numpy's round(v, 2): guards the slope lines against float noise (as tslearn does)
    return float(np.rint(v * 100.0) / 100.0)


@njit(cache=True, nogil=True)
def row_bounds(n, m, code, param):  # type: ignore[no-untyped-def]
    """Admissible columns ``[lo[i], hi[i])`` of every row ``i`` of an ``n x m`` grid."""
    lo = np.zeros(n, dtype=np.int64)
    hi = np.full(n, m, dtype=np.int64)
    if code == 1:
        r = int(param)
        if n <= m:
            width = m - n + r
            for i in range(n):
                lo[i] = max(0, i - r)
                hi[i] = min(m, i + width + 1)
        else:
            width = n - m + r
            for i in range(n):
                lo[i] = max(0, i - width)
                hi[i] = min(m, i + r + 1)
    elif code == 2:
        # the parallelogram is defined column-wise: rows [low[j], up[j]) of column j
        smax = param * n / m
        smin = (1.0 / param) * n / m
        low = np.empty(m, dtype=np.int64)
        up = np.empty(m, dtype=np.int64)
        for j in range(m):
            a = max(_round2(smin * j), _round2((n - 1) - smax * (m - 1) + smax * j))
            b = min(_round2(smax * j), _round2((n - 1) - smin * (m - 1) + smin * j))
            low[j] = math.ceil(a)
            up[j] = math.floor(b + 1.0)
        # both ends grow with j, so each row's admissible columns are contiguous
        for i in range(n):
            first = m
            last = -1
            for j in range(m):
                if low[j] <= i < up[j]:
                    if first == m:
                        first = j
                    last = j
            if last < 0:
                lo[i] = 0
                hi[i] = 0
            else:
                lo[i] = first
                hi[i] = last + 1
    return lo, hi


@njit(cache=True, nogil=True)
def _dtw_sq_pair(x, y, n, m, code, param):  # type: ignore[no-untyped-def]
    """Summed squared Euclidean cost of the best warping path (two rows of memory)."""
    d = x.shape[1]
    prev = np.full(m + 1, INF)
    cur = np.full(m + 1, INF)
    prev[0] = 0.0
    if code == 0:
        if d == 1:
            for i in range(n):
                cur[0] = INF
                xi = x[i, 0]
                for j in range(m):
                    diff = xi - y[j, 0]
                    best = min(prev[j], prev[j + 1], cur[j])
                    cur[j + 1] = diff * diff + best
                prev, cur = cur, prev
        else:
            for i in range(n):
                cur[0] = INF
                for j in range(m):
                    c = 0.0
                    for k in range(d):
                        diff = x[i, k] - y[j, k]
                        c += diff * diff
                    best = min(prev[j], prev[j + 1], cur[j])
                    cur[j + 1] = c + best
                prev, cur = cur, prev
        return prev[m]
    lo, hi = row_bounds(n, m, code, param)
    for i in range(n):
        cur[:] = INF
        for j in range(lo[i], hi[i]):
            c = 0.0
            for k in range(d):
                diff = x[i, k] - y[j, k]
                c += diff * diff
            best = min(prev[j], prev[j + 1], cur[j])
            cur[j + 1] = c + best
        prev, cur = cur, prev
    return prev[m]


@njit(cache=True, parallel=True)
def dtw_sq_paired(x, y, xl, yl, code, param):  # type: ignore[no-untyped-def]
    """Batched paired DTW (summed squared Euclidean costs)."""
    b = x.shape[0]
    out = np.empty(b)
    for p in prange(b):
        out[p] = _dtw_sq_pair(x[p], y[p], xl[p], yl[p], code, param)
    return out


@njit(cache=True, parallel=True)
def dtw_sq_cdist(x, y, xl, yl, code, param, symmetric):  # type: ignore[no-untyped-def]
    """All pairs between two batches (summed squared Euclidean costs)."""
    a = x.shape[0]
    b = y.shape[0]
    out = np.zeros((a, b))
    for q in prange(a * b):
        i = q // b
        j = q % b
        if symmetric and j <= i:
            continue
        out[i, j] = _dtw_sq_pair(x[i], y[j], xl[i], yl[j], code, param)
    if symmetric:
        for i in range(a):
            for j in range(i):
                out[i, j] = out[j, i]
    return out


@njit(cache=True, nogil=True)
def _accumulate(c, n, m, code, param, subsequence, r):  # type: ignore[no-untyped-def]
    """Fill ``r`` ((n+1) x (m+1)) with accumulated costs of the cost matrix ``c``."""
    r[:, :] = INF
    r[0, 0] = 0.0
    if subsequence:
        r[0, : m + 1] = 0.0
    lo, hi = row_bounds(n, m, code, param)
    for i in range(n):
        for j in range(lo[i], hi[i]):
            best = min(r[i, j], r[i, j + 1], r[i + 1, j])
            r[i + 1, j + 1] = c[i, j] + best


@njit(cache=True, parallel=True)
def accumulate(c, xl, yl, code, param, subsequence):  # type: ignore[no-untyped-def]
    """Accumulated cost matrices ``(B, N+1, M+1)`` of a batch of cost matrices."""
    b, n, m = c.shape
    r = np.empty((b, n + 1, m + 1))
    for p in prange(b):
        _accumulate(c[p], xl[p], yl[p], code, param, subsequence, r[p])
    return r


@njit(cache=True, nogil=True)
def backtrack(r, n, m, subsequence):  # type: ignore[no-untyped-def]
    """The optimal path ending at (n-1, m_end-1), as an array of (i, j) rows, start first.

    Ties prefer the diagonal step, then the step in the first series, as tslearn does.
    For subsequence alignment the path ends at the best column and starts in row 0.
    """
    j = m
    if subsequence:
        best = INF
        for jj in range(1, m + 1):
            if r[n, jj] < best:
                best = r[n, jj]
                j = jj
    i = n
    path = np.empty((n + m, 2), dtype=np.int64)
    k = 0
    while True:
        path[k, 0] = i - 1
        path[k, 1] = j - 1
        k += 1
        if i == 1 and (subsequence or j == 1):
            break
        if i == 1:
            j -= 1
            continue
        if j == 1:
            i -= 1
            continue
        a = r[i - 1, j - 1]
        b = r[i - 1, j]
        c = r[i, j - 1]
        if a <= b and a <= c:
            i -= 1
            j -= 1
        elif b <= c:
            i -= 1
        else:
            j -= 1
    return path[:k][::-1].copy()


@njit(cache=True, nogil=True)
def _soft_forward(d, n, m, gamma, r):  # type: ignore[no-untyped-def]
    # anti-diagonal order: the cells of one diagonal are independent, so their exps overlap
    r[:, :] = INF
    r[0, 0] = 0.0
    ig = 1.0 / gamma
    for k in range(2, n + m + 1):
        for i in range(max(1, k - m), min(n, k - 1) + 1):
            j = k - i
            a = r[i - 1, j - 1]
            b = r[i - 1, j]
            c = r[i, j - 1]
            # soft minimum: min - gamma log(1 + exp of the two others' gaps)
            if a <= b and a <= c:
                mn = a
                s = math.exp((a - b) * ig) + math.exp((a - c) * ig)
            elif b <= c:
                mn = b
                s = math.exp((b - a) * ig) + math.exp((b - c) * ig)
            else:
                mn = c
                s = math.exp((c - a) * ig) + math.exp((c - b) * ig)
            r[i, j] = d[i - 1, j - 1] + mn - gamma * math.log(1.0 + s)


@njit(cache=True, parallel=True)
def soft_forward(d, xl, yl, gamma):  # type: ignore[no-untyped-def]
    """Soft-DTW values and the accumulated matrices ``(B, N+2, M+2)`` kept for backward."""
    b, n, m = d.shape
    r = np.empty((b, n + 2, m + 2))
    out = np.empty(b)
    for p in prange(b):
        _soft_forward(d[p], xl[p], yl[p], gamma, r[p])
        out[p] = r[p, xl[p], yl[p]]
    return out, r


@njit(cache=True, nogil=True)
def _soft_backward(d, r, n, m, gamma, e):  # type: ignore[no-untyped-def]
    # Cuturi & Blondel (2017), Algorithm 2, on the valid n x m block
    dp = np.zeros((n + 2, m + 2))
    dp[1 : n + 1, 1 : m + 1] = d[:n, :m]
    rr = r[: n + 2, : m + 2].copy()
    rr[:, m + 1] = -INF
    rr[n + 1, :] = -INF
    rr[n + 1, m + 1] = rr[n, m]
    ee = np.zeros((n + 2, m + 2))
    ee[n + 1, m + 1] = 1.0
    ig = 1.0 / gamma
    for i in range(n, 0, -1):
        for j in range(m, 0, -1):
            rij = rr[i, j]
            a = math.exp((rr[i + 1, j] - rij - dp[i + 1, j]) * ig)
            b = math.exp((rr[i, j + 1] - rij - dp[i, j + 1]) * ig)
            c = math.exp((rr[i + 1, j + 1] - rij - dp[i + 1, j + 1]) * ig)
            ee[i, j] = ee[i + 1, j] * a + ee[i, j + 1] * b + ee[i + 1, j + 1] * c
    e[:, :] = 0.0
    e[:n, :m] = ee[1 : n + 1, 1 : m + 1]


@njit(cache=True, parallel=True)
def soft_backward(d, r, xl, yl, gamma):  # type: ignore[no-untyped-def]
    """Expected alignment matrices ``(B, N, M)`` (the gradient of soft-DTW w.r.t. ``d``)."""
    b, n, m = d.shape
    e = np.empty((b, n, m))
    for p in prange(b):
        _soft_backward(d[p], r[p], xl[p], yl[p], gamma, e[p])
    return e
