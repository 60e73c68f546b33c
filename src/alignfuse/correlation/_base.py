"""Shared input handling and the estimator base class of the correlation family.

Estimators accept numpy arrays and torch tensors alike. Numpy inputs are computed in
float64 (on the CPU) and give numpy outputs; torch inputs are computed in their own
floating dtype (half precision in float32) on their own device and give tensors.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

Array = np.ndarray | torch.Tensor


def as_matrix(x: Any, name: str, check_finite: bool = True) -> tuple[torch.Tensor, bool]:
    """``x`` as a 2-D floating tensor, and whether it came as numpy (or a list).

    ``check_finite=False`` leaves the NaN / Inf check to the caller (see
    :func:`finite_column_means`)."""
    was_numpy = not isinstance(x, torch.Tensor)
    if was_numpy:
        arr = np.asarray(x)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        if np.iscomplexobj(arr) or arr.dtype == bool:
            raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    else:
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
        t = x if x.is_floating_point() else x.double()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # the estimators' linear algebra needs at least float32
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}")
    if t.shape[0] < 2 or t.shape[1] < 1:
        raise ValueError(f"{name} needs at least 2 rows and 1 column, got shape {tuple(t.shape)}")
    if check_finite:
        finite_column_means(t, name)
    return t, was_numpy


def finite_column_means(t: torch.Tensor, name: str) -> torch.Tensor:
    """Column means of ``t``, raising if it holds NaN or Inf. Column sums carry any NaN /
    Inf (and cost a tenth of an elementwise test); only when they are not finite (NaN / Inf,
    or a finite overflow) is every entry tested."""
    sums = column_sums(t)
    if not torch.isfinite(sums).all() and not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return sums / t.shape[0]


def column_sums(t: torch.Tensor) -> torch.Tensor:
    """``t.sum(0)``; on the CPU by numpy. A torch reduction wakes torch's OpenMP threads,
    which then spin for some milliseconds and slow the numpy (OpenBLAS) products that follow
    in the correlation estimators by ~10 ms on 2 cores. float64 sums are one BLAS product
    with a vector of ones (on BLAS's threads: 2 ms instead of 3 ms for 20,000 x 256 on the
    machine of BENCHMARKS.md); float32 keeps numpy's pairwise sum, whose rounding error
    grows with ``log n`` rather than ``n``."""
    if t.device.type != "cpu" or t.requires_grad or t.dtype not in (torch.float32, torch.float64):
        return t.sum(0)
    a = t.numpy()
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite sums: the caller checks
        if t.dtype == torch.float64:
            return torch.from_numpy(np.ones(a.shape[0]) @ a)
        return torch.from_numpy(np.asarray(a.sum(0)))


def as_output(t: torch.Tensor, was_numpy: bool) -> Array:
    """Back to numpy if the input was numpy."""
    return t.detach().cpu().numpy() if was_numpy else t


def check_views(x: torch.Tensor, y: torch.Tensor) -> None:
    """Two views must pair their rows."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of rows (paired samples): "
            f"{x.shape[0]} vs {y.shape[0]}"
        )


def as_views(X: Any, Y: Any, check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both views as tensors of X's dtype and device, with paired rows; and whether the
    input was numpy."""
    x, was_numpy = as_matrix(X, "X", check_finite)
    y, _ = as_matrix(Y, "Y", check_finite)
    y = y.to(dtype=x.dtype, device=x.device)
    check_views(x, y)
    return x, y, was_numpy


def check_components(n_components: int, limit: int, why: str) -> None:
    """``1 <= n_components <= limit``."""
    if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if n_components > limit:
        raise ValueError(f"n_components={n_components} exceeds {why} ({limit})")


def column_correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each column of ``a`` with the same column of ``b``."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = a.norm(dim=0) * b.norm(dim=0)
    out: torch.Tensor = (a * b).sum(0) / den.clamp_min(torch.finfo(a.dtype).tiny)
    return out


class Estimator:
    """scikit-learn conventions: ``__init__`` stores arguments only; fitted attributes end
    in ``_``; ``get_params`` and ``repr`` show the arguments."""

    def get_params(self) -> dict[str, Any]:
        """The constructor arguments."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_fitted(self, attr: str) -> None:
        if not hasattr(self, attr):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(X, Y) first")
