"""Input checks shared by the metrics: arrays or tensors in, float64 tensors out."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_float_matrix(x: Any, name: str, min_rows: int = 1) -> torch.Tensor:
    """``x`` as a finite 2-D float64 tensor on its own device (numpy and lists on the CPU)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(t.shape)}")
    if t.shape[0] < min_rows or t.shape[1] < 1:
        raise ValueError(
            f"{name} needs at least {min_rows} row(s) and 1 column, got shape {tuple(t.shape)}"
        )
    t = t.to(torch.float64)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def as_labels(y: Any, name: str) -> np.ndarray:
    """``y`` as a non-empty 1-D integer numpy array."""
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of labels, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.kind == "b" or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer class labels, got non-integer values")
        arr = arr.astype(np.int64)
    return arr.astype(np.int64)


def same_rows(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    """Paired inputs must have the same number of rows."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names} must pair their rows: {a.shape[0]} vs {b.shape[0]} rows")
