"""Input handling shared by the temporal functions.

A *series* is a tensor or array of shape ``(n,)`` (univariate) or ``(n, d)``. A *batch* of
series is ``(B, n, d)`` (or ``(B, n)`` for univariate series) with optional ``lengths``
(``(B,)`` integers) or a boolean ``mask`` (``(B, n)``, True on valid steps, a prefix of each
row) for series of different lengths padded to a common ``n``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

CONSTRAINTS = {None: 0, "sakoe_chiba": 1, "itakura": 2}


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` as a floating tensor (numpy and lists become float64 on the CPU; float16 and
    bfloat16 become float32, where the dynamic programmes are exact enough)."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"{name} must be real-valued, got dtype {x.dtype}")
        t = x if x.is_floating_point() else x.double()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()  # half precision: the recursions run in float32 (log-sum-exp, min)
    else:
        arr = np.asarray(x)
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    return t


@dataclass
class Batch:
    """A padded batch of series: values ``(B, n, d)`` and the true length of each."""

    values: torch.Tensor
    lengths: torch.Tensor  # int64, on the CPU
    single: bool  # the caller passed one series, not a batch

    @property
    def n(self) -> int:
        return int(self.values.shape[1])

    @property
    def d(self) -> int:
        return int(self.values.shape[2])


def _lengths_from(name: str, b: int, n: int, lengths: Any | None, mask: Any | None) -> torch.Tensor:
    if lengths is not None and mask is not None:
        raise ValueError(f"give {name}_lengths or {name}_mask, not both")
    if mask is not None:
        m = torch.as_tensor(mask)
        if m.dtype != torch.bool or tuple(m.shape) != (b, n):
            raise ValueError(
                f"{name}_mask must be a boolean tensor of shape {(b, n)}, "
                f"got {m.dtype} {tuple(m.shape)}"
            )
        m = m.cpu()
        out = m.sum(1)
        prefix = torch.arange(n)[None, :] < out[:, None]
        if not torch.equal(prefix, m):
            raise ValueError(f"{name}_mask must mark a prefix of each series (True, then False)")
    elif lengths is not None:
        out = torch.as_tensor(lengths).cpu()
        if out.dtype.is_floating_point or out.dtype == torch.bool or tuple(out.shape) != (b,):
            raise ValueError(
                f"{name}_lengths must be {b} integers, got {out.dtype} {tuple(out.shape)}"
            )
        if (out > n).any():
            raise ValueError(f"{name}_lengths must be at most the padded length {n}")
    else:
        out = torch.full((b,), n)
    out = out.to(torch.int64)
    if (out < 1).any():
        raise ValueError(f"{name} contains an empty series (length 0)")
    return out


def as_batch(
    x: Any,
    name: str,
    *,
    lengths: Any | None = None,
    mask: Any | None = None,
    batched: bool | None = None,
) -> Batch:
    """Validate ``x`` and return it as a padded batch.

    ``batched=None`` reads a 3-D input as a batch and a 1-D / 2-D input as one series;
    ``batched=True`` reads a 2-D input as a batch of univariate series.
    """
    t = as_tensor(x, name)
    if batched is None:
        batched = t.ndim == 3
    if batched:
        if t.ndim == 2:
            t = t[:, :, None]
        if t.ndim != 3:
            raise ValueError(
                f"{name} must be a batch of series (B, n, d) or (B, n), got shape {tuple(t.shape)}"
            )
        if t.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (B = 0)")
    else:
        if t.ndim == 1:
            t = t[:, None]
        if t.ndim != 2:
            raise ValueError(
                f"{name} must be one series (n,) or (n, d), got shape {tuple(t.shape)}"
            )
        if lengths is not None or mask is not None:
            raise ValueError(f"{name}_lengths / {name}_mask apply to batches only")
        t = t[None]
    if t.shape[1] == 0:
        raise ValueError(f"{name} is an empty series (length 0)")
    if t.shape[2] == 0:
        raise ValueError(f"{name} has no features (d = 0)")
    lens = _lengths_from(name, int(t.shape[0]), int(t.shape[1]), lengths, mask)
    valid = torch.arange(t.shape[1], device=t.device)[None, :] < lens.to(t.device)[:, None]
    if not torch.isfinite(t[valid]).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return Batch(t, lens, single=not batched)


def pair_up(x: Batch, y: Batch, *, paired: bool = True) -> tuple[Batch, Batch]:
    """Bring ``y`` to ``x``'s dtype and device; check feature sizes (and batch sizes if paired)."""
    if x.d != y.d:
        raise ValueError(f"x and y must have the same number of features, got {x.d} and {y.d}")
    if paired and x.values.shape[0] != y.values.shape[0]:
        raise ValueError(
            f"x and y must hold the same number of series (pairs), got "
            f"{x.values.shape[0]} and {y.values.shape[0]}"
        )
    dtype = torch.promote_types(x.values.dtype, y.values.dtype)
    xv = x.values.to(dtype)
    yv = y.values.to(dtype=dtype, device=xv.device)
    return Batch(xv, x.lengths, x.single), Batch(yv, y.lengths, y.single)


def constraint_code(
    global_constraint: str | None, radius: int | None, slope: float | None
) -> tuple[int, float]:
    """Validate the global constraint arguments; return (kernel code, parameter)."""
    if global_constraint not in CONSTRAINTS:
        raise ValueError(
            f"global_constraint must be None, 'sakoe_chiba' or 'itakura', got {global_constraint!r}"
        )
    code = CONSTRAINTS[global_constraint]
    if code == 1:
        r = 1 if radius is None else radius
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ValueError(f"sakoe_chiba_radius must be an integer >= 0, got {radius!r}")
        return code, float(r)
    if code == 2:
        s = 2.0 if slope is None else float(slope)
        if not s >= 1.0:
            raise ValueError(f"itakura_max_slope must be >= 1, got {slope!r}")
        return code, s
    if radius is not None or slope is not None:
        raise ValueError(
            "sakoe_chiba_radius / itakura_max_slope given without a matching global_constraint"
        )
    return 0, 0.0


def check_gamma(gamma: float) -> float:
    g = float(gamma)
    if not g > 0 or not np.isfinite(g):
        raise ValueError(f"gamma must be a positive finite number, got {gamma!r}")
    return g
