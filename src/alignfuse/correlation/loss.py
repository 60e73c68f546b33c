"""The deep-CCA objective (Andrew et al. 2013) as a differentiable, registered loss.

For two batches ``H_a`` ``(N, p)``, ``H_b`` ``(N, q)`` of network outputs, with ridge ``r``:

    C_aa = H_a^T H_a / (N-1) + r I,  C_bb = ...,  C_ab = H_a^T H_b / (N-1)   (centred)
    T = L_a^{-1} C_ab L_b^{-T}   (L the Cholesky factors: any whitening gives the same
                                 singular values)
    loss = - sum of the top-k singular values of T  (the canonical correlations)

Cholesky whitening plus ridge keeps the objective finite on near-singular batches, and the
gradient of a sum of singular values is well defined, unlike eigen-decomposition gradients
with repeated eigenvalues.
"""

from __future__ import annotations

import torch
from torch import nn

from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES


def cca_loss(
    a: torch.Tensor, b: torch.Tensor, n_components: int | None = None, reg: float = 1e-3
) -> torch.Tensor:
    """Negative sum of the top ``n_components`` canonical correlations of a batch.

    Example:
        >>> x = torch.randn(100, 3, dtype=torch.float64)
        >>> round(float(cca_loss(x, x, reg=0.0)), 6)  # identical views: 3 correlations of 1
        -3.0
    """
    for name, x in (("a", a), ("b", b)):
        if x.ndim != 2 or not x.is_floating_point():
            raise ValueError(
                f"{name} must be a floating (N, D) tensor, got {x.dtype} {tuple(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf")
    n = a.shape[0]
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must hold the same number of rows: {a.shape[0]} vs {b.shape[0]}")
    if n < 2:
        raise ValueError("cca_loss needs at least 2 rows")
    if reg < 0:
        raise ValueError(f"reg must be >= 0, got {reg}")
    k = min(a.shape[1], b.shape[1]) if n_components is None else n_components
    if not 1 <= k <= min(a.shape[1], b.shape[1]):
        raise ValueError(f"n_components must be in [1, {min(a.shape[1], b.shape[1])}], got {k}")
    a = a - a.mean(0)
    b = b - b.mean(0)
    eye_a = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
    eye_b = torch.eye(b.shape[1], dtype=b.dtype, device=b.device)
    la, info_a = torch.linalg.cholesky_ex(a.T @ a / (n - 1) + reg * eye_a)
    lb, info_b = torch.linalg.cholesky_ex(b.T @ b / (n - 1) + reg * eye_b)
    if int(info_a) or int(info_b):
        raise ValueError("a batch covariance is singular: raise reg (ridge) above 0")
    t = torch.linalg.solve_triangular(la, a.T @ b / (n - 1), upper=False)
    t = torch.linalg.solve_triangular(lb, t.T, upper=False).T
    out: torch.Tensor = -torch.linalg.svdvals(t)[:k].sum()
    return out


@LOSSES.register("cca")
class CCALoss(nn.Module):
    """Deep CCA objective (Andrew et al. 2013): minus the sum of the top canonical
    correlations of the two batches, with ridge on the covariances."""

    def __init__(self, n_components: int | None = None, reg: float = 1e-3) -> None:
        super().__init__()
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        self.n_components, self.reg = n_components, reg

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> LossOutput:
        loss = cca_loss(a, b, self.n_components, self.reg)
        return LossOutput(loss, {"correlation": float(-loss.detach())})
