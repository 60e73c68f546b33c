"""Classification metrics for answer / label predictions: F1 and ROC AUC.

Conventions follow scikit-learn's ``f1_score`` and ``roc_auc_score`` (the tests compare with
them): F1 of a class with no true and no predicted example is 0; multiclass AUC is the
unweighted mean of the one-vs-rest AUCs; tied scores count one half.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alignfuse.metrics._checks import as_labels
from alignfuse.registry import METRICS


@METRICS.register("f1")
def f1_scores(y_true: Any, y_pred: Any, num_classes: int | None = None) -> dict[str, float]:
    """Macro, micro and support-weighted F1 of single-label predictions.

    Args:
        y_true, y_pred: ``(N,)`` integer class labels.
        num_classes: classes ``0 .. C-1`` to average over; ``None``: the labels that occur
            in either array (scikit-learn's default).

    Returns ``f1_macro``, ``f1_micro`` (equal to accuracy for single-label data) and
    ``f1_weighted``.

    Example:
        >>> f1_scores([0, 0, 1, 1], [0, 1, 1, 1])["f1_macro"]  # (2/3 + 4/5) / 2
        0.7333333333333334
    """
    t, p = as_labels(y_true, "y_true"), as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length: {t.size} vs {p.size}")
    if t.min() < 0 or p.min() < 0:
        raise ValueError("class labels must be >= 0")
    if num_classes is None:
        classes = np.union1d(t, p)
    else:
        if num_classes < 1 or max(t.max(), p.max()) >= num_classes:
            raise ValueError(
                f"num_classes={num_classes} must exceed every label (max {max(t.max(), p.max())})"
            )
        classes = np.arange(num_classes)
    tp = np.array([np.sum((t == c) & (p == c)) for c in classes], dtype=float)
    support = np.array([np.sum(t == c) for c in classes], dtype=float)
    predicted = np.array([np.sum(p == c) for c in classes], dtype=float)
    den = support + predicted
    per_class = np.divide(2 * tp, den, out=np.zeros_like(tp), where=den > 0)
    weighted = float(per_class @ support / support.sum()) if support.sum() else 0.0
    return {
        "f1_macro": float(per_class.mean()),
        "f1_micro": float((t == p).mean()),
        "f1_weighted": weighted,
    }


def _binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney: the chance that a positive outscores a negative, ties one half, from
    average ranks (O(N log N))."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size)
    sorted_scores = scores[order]
    # average rank (1-based) of each run of tied scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@METRICS.register("roc_auc")
def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve.

    Args:
        y_true: ``(N,)`` labels: 0 / 1 for binary scores, ``0 .. C-1`` for ``(N, C)`` scores.
        scores: ``(N,)`` score of the positive class, or ``(N, C)`` one score per class
            (probabilities or logits alike: each one-vs-rest AUC only uses the ordering).

    Multiclass: the mean of the ``C`` one-vs-rest AUCs (every class must occur in
    ``y_true`` and not be all of it).

    Example:
        >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
        0.75
    """
    t = as_labels(y_true, "y_true")
    s = np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores, dtype=float)
    if s.shape[0] != t.size or s.ndim not in (1, 2):
        raise ValueError(f"scores must be (N,) or (N, C) with N = {t.size}, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or Inf")
    if s.ndim == 1:
        if not np.isin(t, (0, 1)).all():
            raise ValueError("binary y_true must hold 0 / 1 labels (pass (N, C) scores for more)")
        columns = [(t == 1, s)]
    else:
        if t.min() < 0 or t.max() >= s.shape[1]:
            raise ValueError(
                f"y_true labels must lie in [0, {s.shape[1]}) for {s.shape[1]} columns"
            )
        columns = [(t == c, s[:, c]) for c in range(s.shape[1])]
    aucs = []
    for c, (pos, col) in enumerate(columns):
        if pos.all() or not pos.any():
            raise ValueError(
                f"class {c if s.ndim == 2 else 1} needs both positive and negative examples "
                "in y_true: its ROC AUC is undefined"
            )
        aucs.append(_binary_auc(pos, col))
    return float(np.mean(aucs))
