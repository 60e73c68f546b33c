"""Helpers shared by the pairwise losses: positive masks and reductions."""

from __future__ import annotations

import torch

from alignfuse.similarity import REDUCTIONS


def make_positive_mask(
    n: int,
    device: torch.device,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(n, n)`` bool mask of positive pairs ``(a_i, b_j)``.

    The diagonal by default; with ``labels`` (``(n,)``, one class per pair), every pair with
    equal labels; with ``mask``, that mask (which must mark the diagonal).
    """
    if mask is not None and labels is not None:
        raise ValueError("pass labels or positive_mask, not both")
    if mask is not None:
        if mask.shape != (n, n):
            raise ValueError(f"positive_mask must have shape ({n}, {n}), got {tuple(mask.shape)}")
        mask = mask.to(device=device, dtype=torch.bool)
        if not mask.diagonal().all():
            raise ValueError("positive_mask must mark every matched pair (its diagonal)")
        return mask
    if labels is not None:
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
        if labels.is_floating_point():
            raise ValueError(f"labels must be integers, got {labels.dtype}")
        labels = labels.to(device)
        return labels[:, None] == labels[None, :]
    return torch.eye(n, dtype=torch.bool, device=device)


def reduce(per: torch.Tensor, reduction: str) -> torch.Tensor:
    """Apply ``mean``, ``sum`` or ``none`` to per-sample losses."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if reduction == "none":
        return per
    return per.mean() if reduction == "mean" else per.sum()
