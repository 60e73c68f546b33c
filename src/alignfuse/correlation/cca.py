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

import torch

from alignfuse.correlation._base import (
    Array,
    Estimator,
    as_matrix,
    as_output,
    as_views,
    check_components,
    column_correlations,
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


def _cholesky_fit(
    x: torch.Tensor, y: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Whitening by Cholesky factors of the covariances (three BLAS-3 products, ~5x faster
    than QR); ``None`` when a view is too ill-conditioned for it to keep full precision
    (float64 only), so the caller falls back to QR."""
    if x.dtype != torch.float64 or x.shape[0] <= max(x.shape[1], y.shape[1]):
        return None
    n = x.shape[0]
    factors = []
    for v in (x, y):
        c = v.T @ v / (n - 1)
        lc, info = torch.linalg.cholesky_ex(c)
        d = lc.diagonal()
        if int(info) or d.min() <= 0 or float((d.max() / d.min()) ** 2) > MAX_COND:
            return None
        factors.append(lc)
    lx, ly = factors
    t = torch.linalg.solve_triangular(lx, x.T @ y / (n - 1), upper=False)
    t = torch.linalg.solve_triangular(ly, t.T, upper=False).T
    u, s, vh = torch.linalg.svd(t, full_matrices=False)
    wx = torch.linalg.solve_triangular(lx.T, u[:, :k], upper=True)
    wy = torch.linalg.solve_triangular(ly.T, vh.T[:, :k], upper=True)
    return wx, wy, s[:k].clamp(max=1.0)


def cca_fit(
    x: torch.Tensor, y: torch.Tensor, k: int, reg_x: float, reg_y: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weights ``(p, k)``, ``(q, k)`` and correlations ``(k,)`` of centred views."""
    n = x.shape[0]
    if reg_x == 0 and reg_y == 0:
        fast = _cholesky_fit(x, y, k)
        if fast is not None:
            return fast
        qx, rx = _qr_whitener(x, "X", "reg_x")
        qy, ry = _qr_whitener(y, "Y", "reg_y")
        u, s, vh = torch.linalg.svd(qx.T @ qy, full_matrices=False)
        scale = (n - 1) ** 0.5
        wx = torch.linalg.solve_triangular(rx, u[:, :k], upper=True) * scale
        wy = torch.linalg.solve_triangular(ry, vh.T[:, :k], upper=True) * scale
        return wx, wy, s[:k].clamp(max=1.0)
    eye_x = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    eye_y = torch.eye(y.shape[1], dtype=y.dtype, device=y.device)
    ix = _inv_sqrt(x.T @ x / (n - 1) + reg_x * eye_x, "X")
    iy = _inv_sqrt(y.T @ y / (n - 1) + reg_y * eye_y, "Y")
    u, s, vh = torch.linalg.svd(ix @ (x.T @ y / (n - 1)) @ iy, full_matrices=False)
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
        x, y, was_numpy = as_views(X, Y)
        for name, reg in (("reg_x", self.reg_x), ("reg_y", self.reg_y)):
            if reg < 0:
                raise ValueError(f"{name} must be >= 0, got {reg}")
        check_components(
            self.n_components, min(x.shape[1], y.shape[1]), "min(n_features_X, n_features_Y)"
        )
        check_components(self.n_components, x.shape[0] - 1, "n_samples - 1")
        self._mean_x = x.mean(0) if self.center else torch.zeros_like(x[0])
        self._mean_y = y.mean(0) if self.center else torch.zeros_like(y[0])
        wx, wy, corr = cca_fit(
            x - self._mean_x, y - self._mean_y, self.n_components, self.reg_x, self.reg_y
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
