"""Partial least squares (PLS-SVD), the covariance counterpart of CCA.

The pairs of directions maximising ``cov(X w_x, Y w_y)`` with ``|w_x| = |w_y| = 1`` are the
leading singular vectors of the cross-covariance: ``C_xy = U S V^T``, ``w_x = U``, ``w_y = V``
(scikit-learn's ``PLSSVD`` with ``scale=False``).
"""

from __future__ import annotations

import torch

from alignfuse.correlation._base import (
    Array,
    Estimator,
    as_output,
    as_views,
    check_components,
)
from alignfuse.correlation.cca import paired_correlations, project


class PLS(Estimator):
    """PLS-SVD: orthonormal weights of maximal cross-covariance.

    Attributes:
        x_weights_, y_weights_: ``(p, k)``, ``(q, k)`` orthonormal columns.
        covariances_: ``(k,)`` covariances of the score pairs (the singular values).
    """

    def __init__(self, n_components: int = 2, center: bool = True) -> None:
        self.n_components = n_components
        self.center = center

    def fit(self, X: Array, Y: Array) -> PLS:
        """Fit on paired views."""
        x, y, was_numpy = as_views(X, Y)
        check_components(
            self.n_components, min(x.shape[1], y.shape[1]), "min(n_features_X, n_features_Y)"
        )
        self._mean_x = x.mean(0) if self.center else torch.zeros_like(x[0])
        self._mean_y = y.mean(0) if self.center else torch.zeros_like(y[0])
        c = (x - self._mean_x).T @ (y - self._mean_y) / (x.shape[0] - 1)
        u, s, vh = torch.linalg.svd(c, full_matrices=False)
        k = self.n_components
        self._torch = (u[:, :k], vh.T[:, :k])
        self.x_weights_ = as_output(u[:, :k], was_numpy)
        self.y_weights_ = as_output(vh.T[:, :k], was_numpy)
        self.covariances_ = as_output(s[:k], was_numpy)
        return self

    def transform(self, X: Array, Y: Array | None = None) -> Array | tuple[Array, Array]:
        """Scores of ``X`` (and ``Y``)."""
        self._check_fitted("x_weights_")
        wx, wy = self._torch
        zx = project(X, "X", self._mean_x, wx)
        return zx if Y is None else (zx, project(Y, "Y", self._mean_y, wy))

    def score(self, X: Array, Y: Array) -> Array:
        """Correlation of each pair of scores on the given data."""
        out = self.transform(X, Y)
        assert isinstance(out, tuple)
        return paired_correlations(*out)
