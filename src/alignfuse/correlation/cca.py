"""Canonical correlation analysis (Hotelling 1936), with optional ridge per view.

Find ``w_x``, ``w_y`` maximising ``corr(X w_x, Y w_y)``, then further pairs uncorrelated with
the previous ones. Closed form: with centred views and covariances ``C_xx + r_x I``,
``C_yy + r_y I``, ``C_xy``, whiten and take the SVD

    T = C_xx^{-1/2} C_xy C_yy^{-1/2} = U S V^T,   w_x = C_xx^{-1/2} U,   w_y = C_yy^{-1/2} V,

the singular values ``S`` being the canonical correlations. Without ridge, well-conditioned
float64 views are whitened by the Cholesky factors of their covariances (fast, BLAS-3);
views whose condition number exceeds ``MAX_COND`` (and float32 views) are whitened by QR of
the centred data (Bjorck & Golub 1973), which never forms ``X^T X`` and so keeps full
precision. A rank-deficient view (constant or duplicated columns) is an error that asks for
a ridge instead of a silent NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alignfuse.correlation._base import (
    Array,
    Estimator,
    as_matrix,
    as_output,
    as_views,
    check_components,
    column_correlations,
    finite_column_means,
)


def _inv_sqrt(c: torch.Tensor, name: str) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    if vals.min() <= vals.max() * torch.finfo(c.dtype).eps * c.shape[0]:
        raise ValueError(f"the covariance of {name} is singular even with its ridge; raise it")
    out: torch.Tensor = (vecs * vals.rsqrt()) @ vecs.T
    return out


def _qr_whitener(xc: torch.Tensor, name: str, reg_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    q, r = torch.linalg.qr(xc)
    d = r.diagonal().abs()
    tol = d.max() * max(xc.shape) * torch.finfo(xc.dtype).eps
    if xc.shape[0] <= xc.shape[1] or (d <= tol).any():
        raise ValueError(
            f"{name} is rank deficient (constant or duplicated columns, or no more rows than "
            f"columns): pass {reg_name} > 0 for ridge CCA"
        )
    return q, r


MAX_COND = 1e7  # beyond this condition number of a view, whiten by QR instead of Cholesky
MAX_CANCEL = 1e4  # float64 covariances from uncentred products lose at most 4 of 16 digits


def _uncentred_ok(g: Any, c: Any) -> bool:
    """Whether every column's cancellation factor ``sum v^2 / sum (v - m)^2`` (diagonals of
    the uncentred and centred products) is at most ``MAX_CANCEL``."""
    dg, dc = g.diagonal(), c.diagonal()
    return _num((dc > 0).all()) > 0 and _num((dg / dc).max()) <= MAX_CANCEL


def _cross(x: Any, y: Any) -> Any:
    """``x^T y`` with the narrower view on the left: OpenBLAS's SkylakeX gemm ran it 5-25%
    faster that way round for 20,000 rows and widths 64 to 1,024 (14% at 256 and 128;
    within +-7% either way with its Haswell kernels)."""
    return (y.T @ x).T if x.shape[1] > y.shape[1] else x.T @ y


def _covariances_any(x: Any, y: Any, mx: Any, my: Any) -> tuple[Any, Any, Any]:
    """Unscaled ``C_xx, C_xy, C_yy`` of numpy arrays or tensors (the same operators)."""
    n = x.shape[0]
    if x.dtype in (np.float64, torch.float64):
        gxx, gyy = x.T @ x, y.T @ y
        cxx, cyy = gxx - n * mx[:, None] * mx, gyy - n * my[:, None] * my
        if _uncentred_ok(gxx, cxx) and _uncentred_ok(gyy, cyy):
            return cxx, _cross(x, y) - n * mx[:, None] * my, cyy
    xc, yc = x - mx, y - my
    return xc.T @ xc, _cross(xc, yc), yc.T @ yc


def _covariances(
    x: torch.Tensor, y: torch.Tensor, mean_x: torch.Tensor, mean_y: torch.Tensor
) -> tuple[Any, Any, Any]:
    """:func:`covariances` as numpy arrays on the CPU (no grad), tensors otherwise."""
    n = x.shape[0]
    numpy_ok = x.dtype in (torch.float32, torch.float64) and x.device.type == "cpu"
    if numpy_ok and not (x.requires_grad or y.requires_grad):
        cxx, cxy, cyy = _covariances_any(x.numpy(), y.numpy(), mean_x.numpy(), mean_y.numpy())
    else:
        cxx, cxy, cyy = _covariances_any(x, y, mean_x, mean_y)
    return cxx / (n - 1), cxy / (n - 1), cyy / (n - 1)


def covariances(
    x: torch.Tensor, y: torch.Tensor, mean_x: torch.Tensor, mean_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``C_xx``, ``C_xy``, ``C_yy`` of the views about the given means (divided by n - 1).

    float64 views skip the centred copies when their means are small next to their spread:
    ``C = X^T Y - n m_x m_y^T``, kept only if every column's cancellation factor is at most
    ``MAX_CANCEL``; otherwise the views are centred and the products recomputed. On the CPU
    the products run in numpy (OpenBLAS), 1.6x faster than torch's for these tall products
    on the machine of BENCHMARKS.md; they follow numpy's thread settings (e.g.
    ``OPENBLAS_NUM_THREADS``), not ``torch.set_num_threads``."""
    cxx, cxy, cyy = _covariances(x, y, mean_x, mean_y)
    return torch.as_tensor(cxx), torch.as_tensor(cxy), torch.as_tensor(cyy)


def _inv_lower(lo: np.ndarray, leaf: int = 32) -> np.ndarray:
    """Inverse of a lower-triangular matrix by recursive 2 x 2 blocks (the blocking of
    LAPACK's ``trtri``): ``[[A, 0], [B, C]]^-1 = [[A^-1, 0], [-C^-1 B A^-1, C^-1]]``, blocks
    of at most ``leaf`` rows inverted by LU. numpy has no triangular solver; this costs
    0.35 ms at 256 x 256 against 1.0 ms for one general solve (LU) with the same factor."""
    m = lo.shape[0]
    if m <= leaf:
        return np.tril(np.linalg.inv(lo))
    h = m // 2
    a_inv, c_inv = _inv_lower(lo[:h, :h], leaf), _inv_lower(lo[h:, h:], leaf)
    out = np.zeros_like(lo)
    out[:h, :h], out[h:, h:] = a_inv, c_inv
    out[h:, :h] = -(c_inv @ (lo[h:, :h] @ a_inv))
    return out


class _NumpyLinalg:
    """The few dense routines of the Cholesky fit on numpy's own BLAS / LAPACK. Staying in
    one runtime matters on the CPU: torch's (or scipy's) threads spin for milliseconds after
    each call and slow the next numpy product (scipy's triangular solver instead of the
    inverse below: 60 ms per fit instead of 36 ms), and torch's LAPACK costs ~80 ms on its
    first call."""

    @staticmethod
    def cholesky(c: np.ndarray) -> np.ndarray | None:
        try:
            return np.linalg.cholesky(c)
        except np.linalg.LinAlgError:
            return None

    inv_lower = staticmethod(_inv_lower)

    eigh = staticmethod(np.linalg.eigh)

    @staticmethod
    def svd(a: np.ndarray) -> Any:
        return np.linalg.svd(a, full_matrices=False)

    @staticmethod
    def flip(a: np.ndarray, axis: int) -> np.ndarray:
        return np.flip(a, axis)


class _TorchLinalg:
    """The same routines on tensors (any device)."""

    @staticmethod
    def cholesky(c: torch.Tensor) -> torch.Tensor | None:
        lc, info = torch.linalg.cholesky_ex(c)
        return None if int(info) else lc

    @staticmethod
    def inv_lower(lo: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(lo.shape[0], dtype=lo.dtype, device=lo.device)
        out: torch.Tensor = torch.linalg.solve_triangular(lo, eye, upper=False)
        return out

    eigh = staticmethod(torch.linalg.eigh)

    @staticmethod
    def svd(a: torch.Tensor) -> Any:
        return torch.linalg.svd(a, full_matrices=False)

    @staticmethod
    def flip(a: torch.Tensor, axis: int) -> torch.Tensor:
        return a.flip(axis)


def _cholesky_fit(
    cxx: Any, cxy: Any, cyy: Any, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Whitening by the inverse Cholesky factors of the covariances (numpy arrays or tensors;
    ~5x faster than QR); ``None`` when a view is too ill-conditioned for it to keep full precision, so
    the caller falls back to QR."""
    la: Any = _NumpyLinalg if isinstance(cxx, np.ndarray) else _TorchLinalg
    factors = []
    for c in (cxx, cyy):
        lc = la.cholesky(c)
        if lc is None:
            return None
        lo, hi = _num(lc.diagonal().min()), _num(lc.diagonal().max())
        if lo <= 0 or (hi / lo) ** 2 > MAX_COND:
            return None
        factors.append(lc)
    ix, iy = (la.inv_lower(lc) for lc in factors)
    u, s, v = _top_singular(la, ix @ cxy @ iy.T, k)
    out = (ix.T @ u, iy.T @ v, s.clip(max=1.0))
    if la is _NumpyLinalg:
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in out)  # type: ignore[return-value]
    return out


def _num(v: Any) -> float:
    """A scalar array or tensor as a float (detached: used for control flow only)."""
    return float(v.detach() if isinstance(v, torch.Tensor) else v)


def _top_singular(la: Any, t: Any, k: int) -> tuple[Any, Any, Any]:
    """The top ``k`` singular triplets ``U (p, k)``, ``s (k,)``, ``V (q, k)`` of ``t``.

    From the eigenvectors of the smaller Gram matrix (``t^T t`` or ``t t^T``: 3x faster than
    the full SVD at 256 x 128), the other side as ``t v / s``; a full SVD when the k-th
    singular value is too small (below ``1e-4`` of the first) for that quotient to keep
    precision."""
    wide = t.shape[0] < t.shape[1]
    a = t.T if wide else t
    vals, vecs = la.eigh(a.T @ a)
    s = la.flip(vals[-k:], 0).clip(min=0) ** 0.5
    if _num(s[-1]) <= 1e-4 * _num(s[0]):
        u, sv, vh = la.svd(t)
        return u[:, :k], sv[:k], vh[:k].T
    v = la.flip(vecs[:, -k:], 1)
    u = (a @ v) / s
    return (v, s, u) if wide else (u, s, v)


def cca_fit(
    x: torch.Tensor,
    y: torch.Tensor,
    mean_x: torch.Tensor,
    mean_y: torch.Tensor,
    k: int,
    reg_x: float,
    reg_y: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights ``(p, k)``, ``(q, k)`` and correlations ``(k,)`` of the views about the given
    means."""
    n = x.shape[0]
    if reg_x == 0 and reg_y == 0:
        # float64 with more rows than columns: Cholesky whitening of the covariances when
        # well conditioned; otherwise (and float32) QR of the centred data
        if x.dtype == torch.float64 and n > max(x.shape[1], y.shape[1]):
            fast = _cholesky_fit(*_covariances(x, y, mean_x, mean_y), k)
            if fast is not None:
                return fast
        qx, rx = _qr_whitener(x - mean_x, "X", "reg_x")
        qy, ry = _qr_whitener(y - mean_y, "Y", "reg_y")
        u, s, vh = torch.linalg.svd(qx.T @ qy, full_matrices=False)
        scale = (n - 1) ** 0.5
        wx = torch.linalg.solve_triangular(rx, u[:, :k], upper=True) * scale
        wy = torch.linalg.solve_triangular(ry, vh.T[:, :k], upper=True) * scale
        return wx, wy, s[:k].clamp(max=1.0)
    cxx, cxy, cyy = covariances(x, y, mean_x, mean_y)
    eye_x = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    eye_y = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
    ix = _inv_sqrt(cxx + reg_x * eye_x, "X")
    iy = _inv_sqrt(cyy + reg_y * eye_y, "Y")
    u, s, vh = torch.linalg.svd(ix @ cxy @ iy, full_matrices=False)
    return ix @ u[:, :k], iy @ vh.T[:, :k], s[:k].clamp(max=1.0)


class CCA(Estimator):
    """Canonical correlation analysis; ridge CCA with ``reg_x``/``reg_y`` > 0.

    Args:
        n_components: number of canonical pairs ``k`` (at most ``min(p, q)``).
        reg_x, reg_y: ridge added to each view's covariance (``C + r I``); 0 is plain CCA.
        center: subtract the training means.

    Attributes:
        x_weights_, y_weights_: ``(p, k)``, ``(q, k)`` projections (unit-variance scores).
        correlations_: ``(k,)`` canonical correlations of the (regularised) problem.
        mean_x_, mean_y_: training means.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> z = rng.normal(size=(500, 1))
        >>> X = np.hstack([z, rng.normal(size=(500, 2))])
        >>> Y = np.hstack([rng.normal(size=(500, 2)), z + 0.1 * rng.normal(size=(500, 1))])
        >>> cca = CCA(n_components=1).fit(X, Y)
        >>> bool(cca.correlations_[0] > 0.99)
        True
    """

    def __init__(
        self, n_components: int = 2, reg_x: float = 0.0, reg_y: float = 0.0, center: bool = True
    ) -> None:
        self.n_components = n_components
        self.reg_x = reg_x
        self.reg_y = reg_y
        self.center = center

    def fit(self, X: Array, Y: Array) -> CCA:
        """Fit on paired views ``X`` ``(n, p)`` and ``Y`` ``(n, q)``."""
        x, y, was_numpy = as_views(X, Y, check_finite=False)  # checked by the means below
        for name, reg in (("reg_x", self.reg_x), ("reg_y", self.reg_y)):
            if reg < 0:
                raise ValueError(f"{name} must be >= 0, got {reg}")
        check_components(
            self.n_components, min(x.shape[1], y.shape[1]), "min(n_features_X, n_features_Y)"
        )
        check_components(self.n_components, x.shape[0] - 1, "n_samples - 1")
        self._mean_x = finite_column_means(x, "X")
        self._mean_y = finite_column_means(y, "Y")
        if not self.center:
            self._mean_x, self._mean_y = torch.zeros_like(x[0]), torch.zeros_like(y[0])
        wx, wy, corr = cca_fit(
            x, y, self._mean_x, self._mean_y, self.n_components, self.reg_x, self.reg_y
        )
        self._torch = (wx, wy)
        self.x_weights_ = as_output(wx, was_numpy)
        self.y_weights_ = as_output(wy, was_numpy)
        self.correlations_ = as_output(corr, was_numpy)
        self.mean_x_ = as_output(self._mean_x, was_numpy)
        self.mean_y_ = as_output(self._mean_y, was_numpy)
        return self

    def transform(self, X: Array, Y: Array | None = None) -> Array | tuple[Array, Array]:
        """Canonical scores of ``X`` (and of ``Y`` if given)."""
        self._check_fitted("x_weights_")
        wx, wy = self._torch
        zx = project(X, "X", self._mean_x, wx)
        if Y is None:
            return zx
        return zx, project(Y, "Y", self._mean_y, wy)

    def fit_transform(self, X: Array, Y: Array) -> tuple[Array, Array]:
        """``fit(X, Y)`` then ``transform(X, Y)``."""
        out = self.fit(X, Y).transform(X, Y)
        assert isinstance(out, tuple)
        return out

    def score(self, X: Array, Y: Array) -> Array:
        """Correlation of each pair of canonical scores on the given data ``(k,)``."""
        out = self.transform(X, Y)
        assert isinstance(out, tuple)
        return paired_correlations(*out)


def project(data: Array, name: str, mean: torch.Tensor, weights: torch.Tensor) -> Array:
    """``(data - mean) @ weights`` in the input's type, checking the width."""
    t, was_numpy = as_matrix(data, name)
    if t.shape[1] != weights.shape[0]:
        raise ValueError(
            f"{name} has {t.shape[1]} features, the model was fitted on {weights.shape[0]}"
        )
    t = t.to(dtype=weights.dtype, device=weights.device)
    return as_output((t - mean) @ weights, was_numpy)


def paired_correlations(zx: Array, zy: Array) -> Array:
    """Per-column correlations of two score matrices, in the input's type."""
    tx, was_numpy = as_matrix(zx, "scores")
    ty, _ = as_matrix(zy, "scores")
    return as_output(column_correlations(tx, ty.to(tx)), was_numpy)
