"""The library's output types: one dataclass per kind of result."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """What every loss module returns.

    Attributes:
        loss: the scalar to minimise (or per-sample values with ``reduction="none"``).
        logs: detached scalars worth logging (temperature, accuracy in batch, ...).
    """

    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
