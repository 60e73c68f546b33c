"""Zero-shot classification with a joint embedding space (Radford et al. 2021, CLIP §3.1).

Each class is described by prompts (``"a drawing of {}."``, ...); its classifier is the mean
of the prompts' normalised text embeddings, normalised again (CLIP's prompt ensembling), and
an image is assigned the class of highest cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignfuse.metrics._checks import as_float_matrix, as_labels
from alignfuse.registry import METRICS

TEMPLATES = ("a drawing of {}.", "clip art of {}.", "an icon of {}.", "{}")


def class_prompts(classes: Sequence[str], templates: Sequence[str] = TEMPLATES) -> list[str]:
    """Every template filled with every class name, class-major (``C * T`` prompts);
    underscores in names become spaces."""
    if not classes or not templates:
        raise ValueError("classes and templates must be non-empty")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' for the class name")
    return [t.format(c.replace("_", " ")) for c in classes for t in templates]


def class_embeddings(prompt_emb: Any, n_classes: int) -> torch.Tensor:
    """``(C * T, D)`` prompt embeddings (class-major) to ``(C, D)`` normalised class vectors."""
    e = prompt_emb if isinstance(prompt_emb, torch.Tensor) else torch.as_tensor(prompt_emb)
    if e.ndim != 2 or n_classes < 1 or e.shape[0] % n_classes:
        raise ValueError(
            f"prompt_emb must be (n_classes * n_templates, D) for {n_classes} classes, "
            f"got {tuple(e.shape)}"
        )
    e = F.normalize(e.float(), dim=-1).reshape(n_classes, -1, e.shape[1]).mean(1)
    return F.normalize(e, dim=-1)


@METRICS.register("zero_shot")
def zero_shot_metrics(
    image_emb: Any, class_emb: Any, labels: Any, ks: Sequence[int] = (1, 5)
) -> dict[str, Any]:
    """Top-k accuracy (``top1``, ``top5``), mean per-class accuracy (``mean_class``) and the
    per-class accuracies (``per_class``, NaN for a class without test images) of assigning
    each image the class of most similar (cosine) class vector."""
    img = F.normalize(as_float_matrix(image_emb, "image_emb"), dim=-1)
    cls = F.normalize(as_float_matrix(class_emb, "class_emb").to(img.device), dim=-1)
    y = as_labels(labels, "labels")
    if img.shape[1] != cls.shape[1]:
        raise ValueError(
            f"image_emb and class_emb must share their dim: {img.shape[1]} vs {cls.shape[1]}"
        )
    if len(y) != img.shape[0]:
        raise ValueError(f"labels must pair with image_emb's rows: {len(y)} vs {img.shape[0]}")
    n_cls = cls.shape[0]
    if y.min() < 0 or y.max() >= n_cls:
        raise ValueError(f"labels must be class indices in [0, {n_cls})")
    scores = img @ cls.T
    order = scores.argsort(dim=1, descending=True).cpu().numpy()
    out: dict[str, Any] = {}
    for k in ks:
        kk = min(k, n_cls)
        out[f"top{k}"] = float((order[:, :kk] == y[:, None]).any(1).mean())
    correct = order[:, 0] == y
    per_class = np.full(n_cls, np.nan)
    for c in range(n_cls):
        mask = y == c
        if mask.any():
            per_class[c] = correct[mask].mean()
    out["mean_class"] = float(np.nanmean(per_class))
    out["per_class"] = per_class
    return out
