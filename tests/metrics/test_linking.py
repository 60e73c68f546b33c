"""Schema-linking metrics against scikit-learn and plain loops over questions."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from alignfuse.metrics import best_threshold, linking_metrics


def _random(seed, n=40):
    rng = np.random.default_rng(seed)
    scores, gold = [], []
    for _ in range(n):
        m = int(rng.integers(2, 12))
        s = rng.normal(size=m).round(1)  # ties on purpose
        g = set(rng.choice(m, size=int(rng.integers(0, min(4, m) + 1)), replace=False).tolist())
        s[list(g)] += 0.8  # gold items score higher, on average
        scores.append(s)
        gold.append(g)
    return scores, gold


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn_and_a_loop(seed):
    scores, gold = _random(seed)
    labels = np.concatenate(
        [[int(j in g) for j in range(len(s))] for s, g in zip(scores, gold, strict=True)]
    )
    flat = np.concatenate(scores)
    thr = 0.5
    m = linking_metrics(scores, gold, ks=(1, 3), threshold=thr)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, flat), abs=1e-12)
    assert m["f1"] == pytest.approx(f1_score(labels, flat >= thr), abs=1e-12)
    for k in (1, 3):
        rec, cov = [], []
        for s, g in zip(scores, gold, strict=True):
            if not g:
                continue
            top = sorted(range(len(s)), key=lambda j: (-s[j], j))[:k]  # stable: first wins ties
            rec.append(len(set(top) & g) / len(g))
            cov.append(set(g) <= set(top))
        assert m[f"recall@{k}"] == pytest.approx(np.mean(rec))
        assert m[f"coverage@{k}"] == pytest.approx(np.mean(cov))


@pytest.mark.parametrize("seed", [0, 3])
def test_best_threshold_maximises_f1(seed):
    scores, gold = _random(seed)
    labels = np.concatenate(
        [[int(j in g) for j in range(len(s))] for s, g in zip(scores, gold, strict=True)]
    )
    flat = np.concatenate(scores)
    best = max(f1_score(labels, flat >= t) for t in np.unique(flat))
    thr = best_threshold(scores, gold)
    assert f1_score(labels, flat >= thr) == pytest.approx(best)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="disagree: 1 and 2"):
        linking_metrics([np.ones(2)], [{0}, {1}])
    with pytest.raises(ValueError, match="outside the 2 scored"):
        linking_metrics([np.ones(2)], [{2}])
    with pytest.raises(ValueError, match="NaN"):
        linking_metrics([np.array([np.nan, 1.0])], [{0}])
    with pytest.raises(ValueError, match="non-empty 1-d"):
        linking_metrics([np.ones((2, 2))], [{0}])
    with pytest.raises(ValueError, match="ks must be >= 1"):
        linking_metrics([np.ones(2)], [{0}], ks=(0,))
