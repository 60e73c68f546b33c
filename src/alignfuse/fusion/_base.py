"""The interface every fusion module shares.

A fusion module is built with the feature size of each modality it fuses
(``dims={"image": 192, "text": 256}``) and an output size, and is called with a mapping of
modality name to tensor: vectors ``(B, d)`` or sequences ``(B, L, d)`` with an optional
boolean padding mask per modality (True = real token). It returns ``(B, out_dim)``.

The modality order is the order of ``dims`` at construction, whatever the order of the
mapping at call time, so a model's output never depends on dict ordering.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class Fusion(nn.Module):
    """Base class: validation, pooling and the modality order."""

    #: whether the module needs every modality (False: documented missing-modality handling)
    requires_all = True

    def __init__(self, dims: Mapping[str, int], out_dim: int) -> None:
        super().__init__()
        if not isinstance(dims, Mapping) or len(dims) < 1:
            raise ValueError(f"dims must map each modality name to its feature size, got {dims!r}")
        for name, d in dims.items():
            if not isinstance(name, str) or isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise ValueError(f"dims must map names to positive ints, got {name!r}: {d!r}")
        if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
            raise ValueError(f"out_dim must be a positive int, got {out_dim!r}")
        self.dims = dict(dims)
        self.modalities = tuple(dims)
        self.out_dim = out_dim

    def _check(
        self,
        inputs: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None,
        *,
        allow_missing: bool = False,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor | None]]:
        """Validate the inputs; return them (and masks) keyed in the construction order."""
        if not isinstance(inputs, Mapping):
            raise TypeError(
                f"{type(self).__name__} takes a mapping of modality to tensor, got {type(inputs).__name__}"
            )
        unknown = [k for k in inputs if k not in self.dims]
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown modality {unknown[0]!r} (expected {list(self.modalities)})"
            )
        missing = [m for m in self.modalities if m not in inputs]
        if missing and not allow_missing:
            raise ValueError(
                f"{type(self).__name__} needs modality {missing[0]!r} (got {list(inputs)}; expected {list(self.modalities)})"
            )
        if not any(m in inputs for m in self.modalities):
            raise ValueError(
                f"{type(self).__name__}: no modality given (expected some of {list(self.modalities)})"
            )
        masks = masks or {}
        out: dict[str, torch.Tensor] = {}
        out_masks: dict[str, torch.Tensor | None] = {}
        batch = None
        for m in self.modalities:
            if m not in inputs:
                continue
            x = inputs[m]
            if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"modality {m!r} must be (B, d) or (B, L, d), got {shape}")
            if not x.is_floating_point():
                raise ValueError(f"modality {m!r} must be floating point, got {x.dtype}")
            if x.shape[-1] != self.dims[m]:
                raise ValueError(
                    f"modality {m!r} must have {self.dims[m]} features, got {x.shape[-1]}"
                )
            if x.shape[0] == 0 or (x.ndim == 3 and x.shape[1] == 0):
                raise ValueError(f"modality {m!r} is empty: shape {tuple(x.shape)}")
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError(f"modality {m!r} has batch size {x.shape[0]}, others have {batch}")
            if not torch.isfinite(x).all():
                raise ValueError(f"modality {m!r} contains NaN or Inf")
            mask = masks.get(m)
            if mask is not None:
                if x.ndim != 3 or tuple(mask.shape) != tuple(x.shape[:2]):
                    raise ValueError(
                        f"mask of {m!r} must have shape {tuple(x.shape[:2])} (sequences only)"
                    )
                mask = mask.to(device=x.device, dtype=torch.bool)
                if not mask.any(1).all():
                    raise ValueError(f"mask of {m!r} masks every token of some item")
            out[m] = x
            out_masks[m] = mask
        return out, out_masks


def pool(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """A sequence ``(B, L, d)`` as its (masked) mean ``(B, d)``; vectors pass through."""
    if x.ndim == 2:
        return x
    if mask is None:
        return x.mean(1)
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1)


def as_sequence(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors as one-token sequences; returns the sequence and its (full) mask."""
    if x.ndim == 2:
        x = x[:, None]
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return x, mask
