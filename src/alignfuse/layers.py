"""Small layers shared by several blocks and models (one place for each)."""

from __future__ import annotations

from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with GELU between them (none after the last).

    Example:
        >>> net = mlp([4, 8, 2])
        >>> [type(m).__name__ for m in net]
        ['Linear', 'GELU', 'Linear']
    """
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)
