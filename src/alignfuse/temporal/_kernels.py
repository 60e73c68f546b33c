"""Compiled CPU kernels (numba) behind the temporal functions.

Every kernel works on float64 numpy arrays and on the valid prefix of padded inputs
(``n``/``m`` rows of ``(N, ...)``/``(M, ...)`` buffers). The global constraint is passed as
``code`` (0 none, 1 Sakoe-Chiba with ``param`` = radius, 2 Itakura with ``param`` = maximum
slope) and turned into per-row column bounds ``[lo[i], hi[i])``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

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


# ---------------------------------------------------------------- soft-DTW
#
# Soft-DTW spends its time in exp and log (three exps and a log per cell forward, three exps
# backward). Scalar libm calls serialise that work, so the kernels below run the recursion
# for a block of pairs at once with the pair index innermost and contiguous, and use inlined
# polynomial exp / log (accurate to a few ulp on the ranges used) that LLVM vectorises.
# Layout: (chunks, n + 2, m + 2, P) with P pairs per chunk, costs 1-based like R.


@intrinsic
def _bits_to_f64(typingctx, x):  # type: ignore[no-untyped-def]
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], context.get_value_type(types.float64))

    return sig, codegen


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_LN2 = 0.6931471805599453
_SQRT2 = 1.4142135623730951


@njit(cache=True, inline="always", fastmath={"contract"}, error_model="numpy")
def exp_nonpos(x):  # type: ignore[no-untyped-def]
    """exp(x) for x <= 0 (arguments are clamped to [-700, 0]): 2^k times a degree-13 Taylor
    polynomial on |r| <= ln(2) / 2."""
    x = min(max(x, -700.0), 0.0)
    kf = math.floor(x * _LOG2E + 0.5)
    r = (x - kf * _LN2_HI) - kf * _LN2_LO
    p = 1.0 / 6227020800.0
    p = 1.0 / 479001600.0 + r * p
    p = 1.0 / 39916800.0 + r * p
    p = 1.0 / 3628800.0 + r * p
    p = 1.0 / 362880.0 + r * p
    p = 1.0 / 40320.0 + r * p
    p = 1.0 / 5040.0 + r * p
    p = 1.0 / 720.0 + r * p
    p = 1.0 / 120.0 + r * p
    p = 1.0 / 24.0 + r * p
    p = 1.0 / 6.0 + r * p
    p = 0.5 + r * p
    p = 1.0 + r * p
    p = 1.0 + r * p
    return p * _bits_to_f64((np.int64(kf) + 1023) << 52)  # type: ignore[call-arg]


@njit(cache=True, inline="always", fastmath={"contract"}, error_model="numpy")
def log_1_3(s):  # type: ignore[no-untyped-def]
    """log(s) for s in [1, 3]: 2 atanh((t - 1) / (t + 1)) with t = s or s / 2."""
    big = s > _SQRT2
    t = s * 0.5 if big else s
    z = (t - 1.0) / (t + 1.0)
    z2 = z * z
    p = 1.0 / 23.0
    p = 1.0 / 21.0 + z2 * p
    p = 1.0 / 19.0 + z2 * p
    p = 1.0 / 17.0 + z2 * p
    p = 1.0 / 15.0 + z2 * p
    p = 1.0 / 13.0 + z2 * p
    p = 1.0 / 11.0 + z2 * p
    p = 1.0 / 9.0 + z2 * p
    p = 1.0 / 7.0 + z2 * p
    p = 1.0 / 5.0 + z2 * p
    p = 1.0 / 3.0 + z2 * p
    p = 1.0 + z2 * p
    return 2.0 * z * p + (_LN2 if big else 0.0)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _soft_row(r_up, r_i, d_i, m, gamma, ig):  # type: ignore[no-untyped-def]
    npair = r_i.shape[1]
    for j in range(1, m + 1):
        for p in range(npair):
            a = r_up[j - 1, p]
            b = r_up[j, p]
            c = r_i[j - 1, p]
            mn = min(a, min(b, c))
            s = exp_nonpos((mn - a) * ig) + exp_nonpos((mn - b) * ig) + exp_nonpos((mn - c) * ig)
            r_i[j, p] = d_i[j, p] + mn - gamma * log_1_3(s)


@njit(cache=True, parallel=True)
def soft_forward(d, xl, yl, gamma):  # type: ignore[no-untyped-def]
    """Soft-DTW of chunked padded costs ``d`` ``(C, n + 2, m + 2, P)`` (1-based); returns
    the accumulated matrices (same layout) and the values ``(C, P)`` at each pair's lengths
    ``xl``, ``yl`` ``(C, P)``."""
    nc, n2, m2, npair = d.shape
    n, m = n2 - 2, m2 - 2
    r = np.empty_like(d)
    out = np.empty((nc, npair))
    ig = 1.0 / gamma
    for c in prange(nc):
        rc = r[c]
        # every interior cell is written below: only the border needs setting
        rc[0, :, :] = INF
        rc[:, 0, :] = INF
        rc[n + 1, :, :] = INF
        rc[:, m + 1, :] = INF
        rc[0, 0, :] = 0.0
        for i in range(1, n + 1):
            _soft_row(rc[i - 1], rc[i], d[c, i], m, gamma, ig)
        for p in range(npair):
            out[c, p] = rc[xl[c, p], yl[c, p], p]
    return out, r


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _soft_back_weights(r_i, r_dn, d_i, d_dn, m, ig, wa, wb, wc):  # type: ignore[no-untyped-def]
    # The transition weights of row i do not depend on E: one vectorised pass of exps over
    # the row with j ascending. (The same loop with j descending, as the recursion runs,
    # was 3x slower on the machine of BENCHMARKS.md at 32 pairs per chunk: the hardware
    # prefetchers follow ascending streams.)
    npair = r_i.shape[1]
    for j in range(1, m + 1):
        for p in range(npair):
            rij = r_i[j, p]
            wa[j, p] = exp_nonpos((r_dn[j, p] - rij - d_dn[j, p]) * ig)
            wb[j, p] = exp_nonpos((r_i[j + 1, p] - rij - d_i[j + 1, p]) * ig)
            wc[j, p] = exp_nonpos((r_dn[j + 1, p] - rij - d_dn[j + 1, p]) * ig)


@njit(cache=True, fastmath={"contract"}, error_model="numpy")
def _soft_back_row(e_i, e_dn, xl, yl, i, m, wa, wb, wc):  # type: ignore[no-untyped-def]
    # the recursion over the row (j descending), multiply-adds only
    npair = e_i.shape[1]
    for j in range(m, 0, -1):
        for p in range(npair):
            v = e_dn[j, p] * wa[j, p] + e_i[j + 1, p] * wb[j, p] + e_dn[j + 1, p] * wc[j, p]
            n_p = xl[p]
            m_p = yl[p]
            v = 1.0 if (i == n_p and j == m_p) else v
            v = 0.0 if (i > n_p or j > m_p) else v
            e_i[j, p] = v


@njit(cache=True, parallel=True)
def soft_backward(d, r, xl, yl, gamma, scale, out):  # type: ignore[no-untyped-def]
    """Expected alignment matrices (Cuturi & Blondel 2017, Algorithm 2) of the chunked
    layout ``(C, n + 2, m + 2, P)``, each pair's scaled by ``scale[p]`` and written to
    ``out`` ``(B, n, m)`` (any float dtype). The recursion starts at each pair's own lengths;
    cells past them are zero. Only two rows of E are held per chunk."""
    nc, n2, m2, npair = d.shape
    n, m = n2 - 2, m2 - 2
    b = out.shape[0]
    ig = 1.0 / gamma
    for c in prange(nc):
        # one row of each transition weight and two rows of E, reused for every row
        wa, wb, wc = np.empty((m2, npair)), np.empty((m2, npair)), np.empty((m2, npair))
        e_a, e_b = np.zeros((m2, npair)), np.zeros((m2, npair))
        for i in range(n, 0, -1):
            e_i, e_dn = (e_a, e_b) if (n - i) % 2 == 0 else (e_b, e_a)
            _soft_back_weights(r[c, i], r[c, i + 1], d[c, i], d[c, i + 1], m, ig, wa, wb, wc)
            _soft_back_row(e_i, e_dn, xl[c], yl[c], i, m, wa, wb, wc)
            for q in range(npair):
                p = c * npair + q
                if p < b:
                    g = scale[p]
                    row = out[p, i - 1]
                    for j in range(m):
                        row[j] = e_i[j + 1, q] * g
    return out


@njit(cache=True, parallel=True)
def to_chunks(cost, per):  # type: ignore[no-untyped-def]
    """Costs ``(B, n, m)`` to the chunked 1-based layout ``(C, n + 2, m + 2, per)`` (zeros
    around, and for the padding pairs)."""
    b, n, m = cost.shape
    nc = (b + per - 1) // per
    d = np.zeros((nc, n + 2, m + 2, per))
    for c in prange(nc):
        for q in range(per):
            p = c * per + q
            if p < b:
                for i in range(n):
                    for j in range(m):
                        d[c, i + 1, j + 1, q] = cost[p, i, j]
    return d
