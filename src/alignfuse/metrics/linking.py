"""Schema-linking metrics: how well per-item scores find the schema items a question needs.

Each question comes with one score per item of its own database (tables, or columns) and
its gold items. Reported, as RESDSQL (Li et al. 2023) and retrieval-based linkers do:

- ``auc``: ROC AUC pooled over every (question, item) pair of the split;
- ``recall@k``: the mean share of a question's gold items among its top ``k``;
- ``coverage@k``: the share of questions whose every gold item is in their top ``k``
  (what a text-to-SQL model that keeps only the top ``k`` items can still get right);
- ``f1``, ``precision``, ``recall``: over all pairs, an item predicted when its score is at
  least a threshold (chosen on validation with :func:`best_threshold`).

Questions without a gold item (a ``SELECT count(*)`` links no column) count in ``auc`` and
``f1`` through their negatives only, and are left out of ``recall@k`` / ``coverage@k``.

Example:
    >>> scores = [np.array([0.9, 0.2, 0.1]), np.array([0.3, 0.8])]
    >>> gold = [{0}, {0, 1}]
    >>> m = linking_metrics(scores, gold, ks=(1,))
    >>> m["recall@1"], m["coverage@1"], m["auc"]
    (0.75, 0.5, 1.0)
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from alignfuse.metrics.classification import roc_auc
from alignfuse.registry import METRICS


def _check(scores: Sequence[np.ndarray], gold: Sequence[Collection[int]]) -> list[np.ndarray]:
    if len(scores) != len(gold):
        raise ValueError(f"scores and gold disagree: {len(scores)} and {len(gold)} questions")
    out = []
    for i, (s, g) in enumerate(zip(scores, gold, strict=True)):
        a = np.asarray(s, dtype=float)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"scores[{i}] must be a non-empty 1-d array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"scores[{i}] holds NaN or Inf")
        if any(not 0 <= j < a.size for j in g):
            raise ValueError(f"gold[{i}] names an item outside the {a.size} scored")
        out.append(a)
    return out


def _pairs(
    scores: list[np.ndarray], gold: Sequence[Collection[int]]
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate(
        [
            np.isin(np.arange(s.size), list(g)).astype(np.int64)
            for s, g in zip(scores, gold, strict=True)
        ]
    )
    return labels, np.concatenate(scores)


def best_threshold(scores: Sequence[np.ndarray], gold: Sequence[Collection[int]]) -> float:
    """The score threshold with the best pooled F1 (an item is predicted at or above it)."""
    labels, flat = _pairs(_check(scores, gold), gold)
    order = np.argsort(-flat, kind="mergesort")
    s, y = flat[order], labels[order]
    tp = np.cumsum(y)
    predicted = np.arange(1, len(s) + 1)
    f1 = 2 * tp / (predicted + y.sum())
    # a threshold can only sit at the last of a run of tied scores
    last = np.r_[s[1:] != s[:-1], True]
    best = int(np.argmax(np.where(last, f1, -1.0)))
    return float(s[best])


@METRICS.register("linking")
def linking_metrics(
    scores: Sequence[np.ndarray],
    gold: Sequence[Collection[int]],
    ks: Sequence[int] = (1, 3, 5, 10),
    threshold: float | None = None,
) -> dict[str, float]:
    """AUC, recall@k, coverage@k (and F1 at ``threshold``) of per-question item scores.

    Args:
        scores: one ``(n_items,)`` array per question (its database's items).
        gold: the gold item indices of each question.
        ks: the cut-offs of recall and coverage.
        threshold: with it, pooled precision, recall and F1 of ``score >= threshold``.
    """
    arrays = _check(scores, gold)
    labels, flat = _pairs(arrays, gold)
    out: dict[str, float] = {}
    if 0 < labels.sum() < labels.size:
        out["auc"] = roc_auc(labels, flat)
    with_gold = [(s, g) for s, g in zip(arrays, gold, strict=True) if len(g)]
    for k in ks:
        if k < 1:
            raise ValueError(f"ks must be >= 1, got {k}")
        rec, cov = [], []
        for s, g in with_gold:
            top = set(np.argsort(-s, kind="mergesort")[:k].tolist())
            hit = len(top & set(g))
            rec.append(hit / len(g))
            cov.append(float(hit == len(g)))
        out[f"recall@{k}"] = float(np.mean(rec)) if rec else float("nan")
        out[f"coverage@{k}"] = float(np.mean(cov)) if cov else float("nan")
    if threshold is not None:
        pred = flat >= threshold
        tp = float((pred & (labels == 1)).sum())
        precision = tp / max(1.0, float(pred.sum()))
        recall = tp / max(1.0, float(labels.sum()))
        out["precision"] = precision
        out["recall"] = recall
        out["f1"] = 2 * precision * recall / (precision + recall) if tp else 0.0
    return out
