"""Orthogonal Procrustes (Schonemann 1966): the rotation (optionally with a global scale)
that best maps one embedding space onto another,

    W = argmin_{W^T W = I} ||X W - Y||_F   =   U V^T  where  X^T Y = U S V^T,
    s = trace(S) / ||X||_F^2    (with scaling),

on centred views. The standard way to align two embedding models (word vectors across
languages, two checkpoints, two encoders) from paired samples.
"""

from __future__ import annotations

import torch

from alignfuse.correlation._base import (
    Array,
    Estimator,
    as_matrix,
    as_output,
    as_views,
)


class Procrustes(Estimator):
    """Orthogonal map from X's space to Y's (both of width ``d``). For spaces of different
    widths, first reduce the wider one (PCA) or use :class:`CCA` / :class:`PLS`: with a
    rectangular map the SVD solution no longer minimises the residual.

    Attributes:
        rotation_: ``(d, d)`` orthogonal matrix.
        scale_: the global scale (1 without ``scaling``).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(50, 3))
        >>> R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        >>> model = Procrustes().fit(X, X @ R)
        >>> bool(np.allclose(model.rotation_, R))
        True
    """

    def __init__(self, scaling: bool = False, center: bool = True) -> None:
        self.scaling = scaling
        self.center = center

    def fit(self, X: Array, Y: Array) -> Procrustes:
        """Fit the map from paired rows of ``X`` ``(n, p)`` and ``Y`` ``(n, q)``."""
        x, y, was_numpy = as_views(X, Y)
        if x.shape[1] != y.shape[1]:
            raise ValueError(
                f"X and Y must have the same number of features for an orthogonal map: "
                f"{x.shape[1]} vs {y.shape[1]} (reduce the wider view first, or use CCA / PLS)"
            )
        self._mean_x = x.mean(0) if self.center else torch.zeros_like(x[0])
        self._mean_y = y.mean(0) if self.center else torch.zeros_like(y[0])
        xc, yc = x - self._mean_x, y - self._mean_y
        u, s, vh = torch.linalg.svd(xc.T @ yc, full_matrices=False)
        w = u @ vh
        scale = s.sum() / xc.pow(2).sum() if self.scaling else torch.ones((), dtype=x.dtype)
        self._torch = (w, scale)
        self.rotation_ = as_output(w, was_numpy)
        self.scale_ = float(scale)
        return self

    def transform(self, X: Array) -> Array:
        """Map ``X`` into Y's space: ``(X - mean_x) W s + mean_y``."""
        self._check_fitted("rotation_")
        w, scale = self._torch
        x, was_numpy = as_matrix(X, "X")
        if x.shape[1] != w.shape[0]:
            raise ValueError(f"X has {x.shape[1]} features, the model was fitted on {w.shape[0]}")
        x = x.to(w)
        return as_output((x - self._mean_x) @ w * scale + self._mean_y, was_numpy)

    def score(self, X: Array, Y: Array) -> float:
        """Coefficient of determination R^2 of the mapped ``X`` against ``Y``."""
        pred, _ = as_matrix(self.transform(X), "X")
        y, _ = as_matrix(Y, "Y")
        y = y.to(pred)
        ss_res = (pred - y).pow(2).sum()
        ss_tot = (y - y.mean(0)).pow(2).sum()
        return float(1 - ss_res / ss_tot)
