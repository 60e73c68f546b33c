"""Input checks shared by the interaction scorers."""

from __future__ import annotations

import torch

from alignfuse.losses.token_wise import _check_tokens


def check_items(x: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """Validate a batch of token sequences ``(N, L, d)`` and return its boolean mask."""
    if not isinstance(x, torch.Tensor) or x.ndim != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a tensor (N, L, d), got {shape}")
    if 0 not in x.shape and not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    # emptiness, NaN / Inf and the mask: the token-level losses' check
    return _check_tokens(x, mask, name)


def check_pair(
    regions: torch.Tensor,
    words: torch.Tensor,
    region_mask: torch.Tensor | None,
    word_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the inputs of an all-pairs scorer; return ``words`` in the regions' dtype and
    device, and both masks."""
    rm = check_items(regions, region_mask, "regions")
    wm = check_items(words, word_mask, "words")
    if regions.shape[-1] != words.shape[-1]:
        raise ValueError(
            f"regions and words must share the feature size, got {regions.shape[-1]} and {words.shape[-1]}"
        )
    return words.to(regions), rm, wm
