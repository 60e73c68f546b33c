"""Metrics against brute-force loops."""

import numpy as np
import pytest
import torch

import alignfuse
from alignfuse.metrics import (
    hard_negative_accuracy,
    retrieval_metrics,
    retrieval_ranks,
    winoground_scores,
)


def brute_ranks(sims, owner):
    n_img, n_txt = sims.shape
    i2t = []
    for i in range(n_img):
        order = sorted(range(n_txt), key=lambda t: -sims[i, t])
        # pessimistic ties: a wrong caption tied with the best own one ranks above it
        best = max(sims[i, t] for t in range(n_txt) if owner[t] == i)
        above = sum(1 for t in range(n_txt) if owner[t] != i and sims[i, t] >= best)
        assert order  # the loop really ranks
        i2t.append(1 + above)
    t2i = []
    for t in range(n_txt):
        pos = sims[owner[t], t]
        t2i.append(1 + sum(1 for i in range(n_img) if i != owner[t] and sims[i, t] >= pos))
    return np.array(i2t), np.array(t2i)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_ranks_match_brute_force(seed, ties):
    rng = np.random.default_rng(seed)
    n_img = 13
    owner = np.repeat(np.arange(n_img), rng.integers(1, 6, n_img))
    sims = rng.normal(size=(n_img, len(owner)))
    if ties:
        sims = np.round(sims, 0)
    i2t, t2i = retrieval_ranks(torch.from_numpy(sims), torch.from_numpy(owner), chunk=4)
    bi2t, bt2i = brute_ranks(sims, owner)
    assert np.array_equal(i2t, bi2t) and np.array_equal(t2i, bt2i)


def test_metrics_values_from_ranks():
    rng = np.random.default_rng(7)
    owner = np.repeat(np.arange(20), 5)
    sims = rng.normal(size=(20, 100))
    m = retrieval_metrics(sims, owner)
    bi2t, bt2i = brute_ranks(sims, owner)
    for k in (1, 5, 10):
        assert m[f"i2t_r{k}"] == pytest.approx(np.mean(bi2t <= k))
        assert m[f"t2i_r{k}"] == pytest.approx(np.mean(bt2i <= k))
    assert m["rsum"] == pytest.approx(
        100 * sum(m[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    )
    assert m["i2t_medr"] == np.median(bi2t) and m["t2i_meanr"] == pytest.approx(bt2i.mean())


def test_perfect_and_registered():
    owner = np.repeat(np.arange(4), 2)
    sims = np.eye(4)[:, owner]
    m = alignfuse.create_metric("retrieval")(sims, owner)
    assert m["rsum"] == 600.0 and m["t2i_medr"] == 1.0


def test_retrieval_bad_inputs():
    with pytest.raises(ValueError, match="owner must have shape"):
        retrieval_ranks(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="has no caption"):
        retrieval_ranks(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_ranks(np.full((2, 2), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_ranks(np.zeros((2, 2)), np.array([0, 5]))


def test_winoground_matches_loop():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(50, 2, 2))
    got = winoground_scores(s)
    text = image = group = 0
    for g in range(50):
        t = s[g, 0, 0] > s[g, 1, 0] and s[g, 1, 1] > s[g, 0, 1]
        i = s[g, 0, 0] > s[g, 0, 1] and s[g, 1, 1] > s[g, 1, 0]
        text, image, group = text + t, image + i, group + (t and i)
    assert got == {"wino_text": text / 50, "wino_image": image / 50, "wino_group": group / 50}
    with pytest.raises(ValueError, match=r"\(G, 2, 2\)"):
        winoground_scores(np.zeros((3, 2)))


def test_hard_negative_accuracy():
    assert hard_negative_accuracy([1, 2, 3], [0, 2, 4]) == {"hard_negative_acc": 1 / 3}
    with pytest.raises(ValueError, match="equal non-empty"):
        hard_negative_accuracy([1, 2], [1])
