"""Kernel CCA with ridge (Lai & Fyfe 2000; Bach & Jordan 2002; Hardoon et al. 2004), exact or
with a Nystrom approximation (Williams & Seeger 2001) behind the same class.

Both are ridge CCA on kernel features ``Phi`` with ``Phi Phi^T ~ K``: for ``m`` landmarks ``L``
(all training points for ``method="exact"``, a random subset for ``"nystrom"``),

    Phi(X) = K(X, L) U Lambda^{-1/2},    K(L, L) = U Lambda U^T,

which gives ``Phi Phi^T = K`` exactly on the training set when ``L`` is the whole set, and the
usual out-of-sample extension for new points. Ridge CCA on ``Phi`` is the regularised KCCA
whose constraint is ``alpha^T (K^2 / (n - 1) + r K) alpha = 1``. Exact KCCA costs ``O(n^3)``;
Nystrom costs ``O(n m^2)``, so it fits ``n = 100,000`` in seconds.
"""

from __future__ import annotations

import torch

from alignfuse.correlation._base import (
    Array,
    Estimator,
    as_matrix,
    as_output,
    check_components,
    check_views,
)
from alignfuse.correlation.cca import cca_fit, paired_correlations

KERNELS = ("linear", "rbf", "poly")


def kernel_matrix(
    x: torch.Tensor, z: torch.Tensor, kernel: str, gamma: float, degree: int, coef0: float
) -> torch.Tensor:
    """``K(x, z)`` for the ``linear``, ``rbf`` (``exp(-gamma |x - z|^2)``) and ``poly``
    (``(gamma <x, z> + coef0)^degree``) kernels."""
    if kernel == "linear":
        return x @ z.T
    if kernel == "rbf":
        d2 = (x.pow(2).sum(1)[:, None] + z.pow(2).sum(1)[None, :] - 2 * x @ z.T).clamp_min(0)
        return torch.exp(-gamma * d2)
    if kernel == "poly":
        return (gamma * (x @ z.T) + coef0) ** degree
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


class _KernelFeatures:
    def __init__(
        self,
        x: torch.Tensor,
        landmarks: torch.Tensor,
        kernel: str,
        gamma: float | None,
        degree: int,
        coef0: float,
    ):
        self.kernel, self.degree, self.coef0 = kernel, degree, coef0
        self.gamma = gamma if gamma is not None else 1.0 / (x.shape[1] * float(x.var()) or 1.0)
        self.landmarks = landmarks
        k_ll = kernel_matrix(landmarks, landmarks, kernel, self.gamma, degree, coef0)
        vals, vecs = torch.linalg.eigh(k_ll)
        keep = vals > vals.max() * 1e-10
        self.map = vecs[:, keep] * vals[keep].rsqrt()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = (
            kernel_matrix(x, self.landmarks, self.kernel, self.gamma, self.degree, self.coef0)
            @ self.map
        )
        return out


class KCCA(Estimator):
    """Regularised kernel CCA, exact (``method="exact"``) or Nystrom (``"nystrom"``).

    Args:
        n_components: canonical pairs ``k``.
        kernel: ``linear``, ``rbf`` or ``poly`` (the same for both views).
        gamma: kernel width; default ``1 / (n_features * var(X))`` per view.
        degree, coef0: polynomial kernel parameters.
        reg_x, reg_y: ridge on each view's feature covariance (> 0 is advisable: without it
            KCCA finds trivial correlations of 1 when ``n`` is at most the feature count).
        method: ``exact`` (all training points as landmarks) or ``nystrom``.
        n_landmarks: landmarks for ``nystrom``.
        random_state: seed of the landmark choice.

    Attributes:
        correlations_: ``(k,)`` canonical correlations of the regularised problem.
    """

    def __init__(
        self,
        n_components: int = 2,
        kernel: str = "rbf",
        gamma: float | None = None,
        degree: int = 3,
        coef0: float = 1.0,
        reg_x: float = 1e-3,
        reg_y: float = 1e-3,
        method: str = "exact",
        n_landmarks: int = 1000,
        random_state: int = 0,
    ) -> None:
        self.n_components = n_components
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.reg_x = reg_x
        self.reg_y = reg_y
        self.method = method
        self.n_landmarks = n_landmarks
        self.random_state = random_state

    def _features(self, x: torch.Tensor, seed_offset: int) -> _KernelFeatures:
        if self.method == "exact":
            landmarks = x
        else:
            g = torch.Generator().manual_seed(self.random_state + seed_offset)
            m = min(self.n_landmarks, x.shape[0])
            landmarks = x[torch.randperm(x.shape[0], generator=g)[:m].to(x.device)]
        return _KernelFeatures(x, landmarks, self.kernel, self.gamma, self.degree, self.coef0)

    def fit(self, X: Array, Y: Array) -> KCCA:
        """Fit on paired views."""
        x, was_numpy = as_matrix(X, "X")
        y, _ = as_matrix(Y, "Y")
        y = y.to(x)
        check_views(x, y)
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        if self.method not in ("exact", "nystrom"):
            raise ValueError(f"method must be 'exact' or 'nystrom', got {self.method!r}")
        if self.method == "nystrom" and self.n_landmarks < 2:
            raise ValueError(f"n_landmarks must be >= 2, got {self.n_landmarks}")
        for name, reg in (("reg_x", self.reg_x), ("reg_y", self.reg_y)):
            if reg < 0:
                raise ValueError(f"{name} must be >= 0, got {reg}")
        self._fx, self._fy = self._features(x, 0), self._features(y, 1)
        px, py = self._fx(x), self._fy(y)
        check_components(
            self.n_components, min(px.shape[1], py.shape[1]), "the kernel feature rank"
        )
        self._mean_x, self._mean_y = px.mean(0), py.mean(0)
        wx, wy, corr = cca_fit(
            px, py, self._mean_x, self._mean_y, self.n_components, self.reg_x, self.reg_y
        )
        self._torch = (wx, wy)
        self.correlations_ = as_output(corr, was_numpy)
        return self

    def transform(self, X: Array, Y: Array | None = None) -> Array | tuple[Array, Array]:
        """Canonical scores of new ``X`` (and ``Y``) through the kernel features."""
        self._check_fitted("correlations_")
        wx, wy = self._torch
        x, was_numpy = as_matrix(X, "X")
        x = x.to(wx)
        if x.shape[1] != self._fx.landmarks.shape[1]:
            raise ValueError(
                f"X has {x.shape[1]} features, the model was fitted on {self._fx.landmarks.shape[1]}"
            )
        zx = as_output((self._fx(x) - self._mean_x) @ wx, was_numpy)
        if Y is None:
            return zx
        y, _ = as_matrix(Y, "Y")
        y = y.to(wy)
        if y.shape[1] != self._fy.landmarks.shape[1]:
            raise ValueError(
                f"Y has {y.shape[1]} features, the model was fitted on {self._fy.landmarks.shape[1]}"
            )
        return zx, as_output((self._fy(y) - self._mean_y) @ wy, was_numpy)

    def score(self, X: Array, Y: Array) -> Array:
        """Correlation of each pair of canonical scores on the given data."""
        out = self.transform(X, Y)
        assert isinstance(out, tuple)
        return paired_correlations(*out)
