"""Compositional probes: hard-negative caption accuracy and Winoground scores.

Winoground (Thrush et al. 2022): for a group of captions ``C0, C1`` and images ``I0, I1``
(``Ck`` describes ``Ik``) and a score ``s(C, I)``:

* text score: ``s(C0,I0) > s(C1,I0)`` and ``s(C1,I1) > s(C0,I1)``;
* image score: ``s(C0,I0) > s(C0,I1)`` and ``s(C1,I1) > s(C1,I0)``;
* group score: both.
"""

from __future__ import annotations

import numpy as np
import torch

from alignfuse.registry import METRICS


@METRICS.register("hard_negative")
def hard_negative_accuracy(
    positive: torch.Tensor | np.ndarray, negative: torch.Tensor | np.ndarray
) -> dict[str, float]:
    """Share of images that score their true caption strictly above its minimal edit.

    Args:
        positive: ``(N,)`` score of each image with its true caption.
        negative: ``(N,)`` score of each image with the hard-negative caption.

    Example:
        >>> hard_negative_accuracy(np.array([0.9, 0.2]), np.array([0.1, 0.5]))
        {'hard_negative_acc': 0.5}
    """
    p, n = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if p.shape != n.shape or p.ndim != 1 or p.size == 0:
        raise ValueError(
            f"positive and negative must be equal non-empty 1-D, got {p.shape}, {n.shape}"
        )
    if not (np.isfinite(p).all() and np.isfinite(n).all()):
        raise ValueError("scores contain NaN or Inf")
    return {"hard_negative_acc": float((p > n).mean())}


@METRICS.register("winoground")
def winoground_scores(scores: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Winoground text, image and group scores.

    Args:
        scores: ``(G, 2, 2)`` with ``scores[g, c, i] = s(caption c, image i)`` of group ``g``.

    Example:
        >>> s = np.array([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.6], [0.4, 0.7]]])
        >>> winoground_scores(s)
        {'wino_text': 1.0, 'wino_image': 0.5, 'wino_group': 0.5}
    """
    s = np.asarray(scores, dtype=float)
    if s.ndim != 3 or s.shape[1:] != (2, 2) or s.shape[0] == 0:
        raise ValueError(f"scores must have shape (G, 2, 2), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    text = (s[:, 0, 0] > s[:, 1, 0]) & (s[:, 1, 1] > s[:, 0, 1])
    image = (s[:, 0, 0] > s[:, 0, 1]) & (s[:, 1, 1] > s[:, 1, 0])
    return {
        "wino_text": float(text.mean()),
        "wino_image": float(image.mean()),
        "wino_group": float((text & image).mean()),
    }
