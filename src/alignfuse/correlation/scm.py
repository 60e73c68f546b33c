"""Semantic correlation matching, Rasiwasia et al. 2010 ("A New Approach to Cross-Modal
Multimedia Retrieval").

CCA first maps both views into a correlated subspace; then, per view, a multinomial logistic
regression maps the CCA projections to class posteriors. Both views end in the same semantic
space (the simplex over classes), where cross-view retrieval compares posterior vectors.
"""

from __future__ import annotations

import numpy as np
import torch

from alignfuse.correlation._base import Array, Estimator, as_matrix, as_output
from alignfuse.correlation.cca import CCA
from alignfuse.metrics.probes import fit_logistic


class SCM(Estimator):
    """CCA followed by per-view logistic regression into class posteriors.

    Attributes:
        cca_: the fitted :class:`CCA`.
        n_classes_: number of classes.
    """

    def __init__(
        self, n_components: int = 10, reg_x: float = 1e-3, reg_y: float = 1e-3, l2: float = 1e-3
    ) -> None:
        self.n_components = n_components
        self.reg_x = reg_x
        self.reg_y = reg_y
        self.l2 = l2

    def fit(self, X: Array, Y: Array, labels: Array | None = None) -> SCM:
        """Fit CCA on ``X``, ``Y`` and the two posterior maps on ``labels`` (required)."""
        if labels is None:
            raise ValueError("SCM needs labels (one class per pair) to learn the semantic space")
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        if lab.ndim != 1 or (lab < 0).any():
            raise ValueError("labels must be a 1-D array of non-negative class indices")
        self.cca_ = CCA(self.n_components, self.reg_x, self.reg_y).fit(X, Y)
        zx, zy = self.cca_.transform(X, Y)  # type: ignore[misc]
        tx, _ = as_matrix(zx, "X scores")
        ty, _ = as_matrix(zy, "Y scores")
        if lab.shape != (tx.shape[0],):
            raise ValueError(f"labels must have shape ({tx.shape[0]},), got {tuple(lab.shape)}")
        self._lr_x = fit_logistic(tx, lab.to(tx.device), self.l2)
        self._lr_y = fit_logistic(ty, lab.to(ty.device), self.l2)
        self.n_classes_ = int(lab.max()) + 1
        return self

    def _posterior(self, z: Array, lr: tuple[torch.Tensor, torch.Tensor]) -> Array:
        t, was_numpy = as_matrix(z, "scores")
        w, b = lr
        return as_output((t.to(w) @ w + b).softmax(1), was_numpy)

    def transform(self, X: Array, Y: Array | None = None) -> Array | tuple[Array, Array]:
        """Class posteriors of ``X`` (and ``Y``): ``(n, n_classes)`` rows on the simplex."""
        self._check_fitted("cca_")
        if Y is None:
            return self._posterior(self.cca_.transform(X), self._lr_x)  # type: ignore[arg-type]
        zx, zy = self.cca_.transform(X, Y)  # type: ignore[misc]
        return self._posterior(zx, self._lr_x), self._posterior(zy, self._lr_y)

    def score(self, X: Array, Y: Array) -> Array:
        """Canonical correlations of the CCA stage on the given data."""
        self._check_fitted("cca_")
        return self.cca_.score(X, Y)
