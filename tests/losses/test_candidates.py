"""One query against its own candidates: the square one-positive case equals the library's
batch losses, and every case equals a plain loop over queries, positives and negatives."""

import math

import pytest
import torch
import torch.nn.functional as F

from alignfuse import create_loss
from alignfuse.losses.candidates import candidate_info_nce, candidate_sigmoid, candidate_triplet
from alignfuse.losses.info_nce import info_nce_from_similarity
from alignfuse.losses.sigmoid import sigmoid_loss
from alignfuse.losses.triplet import triplet_from_similarity


def _case(seed, q=5, n=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(q, n, generator=g, dtype=dtype) * 2 - 1
    valid = torch.rand(q, n, generator=g) < 0.8
    positive = (torch.rand(q, n, generator=g) < 0.3) & valid
    positive[0] = False  # a query without a positive is left out
    positive[1, 0] = valid[1, 0] = True
    return scores, positive, valid


def _rows(scores, positive, valid):
    for i in range(scores.shape[0]):
        cands = [j for j in range(scores.shape[1]) if valid[i, j]]
        pos = [j for j in cands if positive[i, j]]
        if pos:
            yield i, cands, pos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_info_nce_equals_a_loop(seed):
    scores, positive, valid = _case(seed)
    t = 3.0
    want = []
    for i, cands, pos in _rows(scores, positive, valid):
        logits = torch.stack([scores[i, j] * math.exp(t) for j in cands])
        logp = logits.log_softmax(0)
        want.append(-sum(logp[cands.index(p)] for p in pos) / len(pos))
    got = candidate_info_nce(scores, positive, valid, t)
    assert torch.allclose(got, torch.stack(want).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_sigmoid_equals_a_loop(seed):
    scores, positive, valid = _case(seed)
    t, b = math.log(10.0), -5.0
    want = []
    for i, cands, pos in _rows(scores, positive, valid):
        row = 0.0
        for j in cands:
            z = 1.0 if j in pos else -1.0
            row = row - F.logsigmoid(torch.tensor(z) * (scores[i, j] * math.exp(t) + b))
        want.append(row)
    assert torch.allclose(
        candidate_sigmoid(scores, positive, valid, t, b), torch.stack(want).mean()
    )


@pytest.mark.parametrize(("seed", "mining"), [(0, "sum"), (1, "hardest"), (2, "hardest")])
def test_triplet_equals_a_loop(seed, mining):
    scores, positive, valid = _case(seed)
    total = torch.zeros((), dtype=scores.dtype)
    for i, cands, pos in _rows(scores, positive, valid):
        negs = [j for j in cands if j not in pos]
        for p in pos:
            costs = [torch.clamp(0.2 - scores[i, p] + scores[i, n], min=0) for n in negs]
            if costs:
                total = total + (max(costs) if mining == "hardest" else sum(costs))
    got = candidate_triplet(scores, positive, valid, 0.2, mining)
    assert torch.allclose(got, total)
    n_pos = int(positive.sum())
    mean = candidate_triplet(scores, positive, valid, 0.2, mining, reduction="mean")
    assert torch.allclose(mean, total / n_pos)


def test_square_one_positive_case_is_the_batch_loss():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    b = F.normalize(torch.randn(6, 4, generator=g, dtype=torch.float64), dim=1)
    eye = torch.eye(6, dtype=torch.bool)
    sym = (a @ a.T).clone()  # symmetric: the batch losses' two directions agree
    assert torch.allclose(
        candidate_info_nce(sym, eye, None, 2.0), info_nce_from_similarity(sym, 2.0)
    )
    # SigLIP is one-directional: the batch loss over all pairs, per image
    assert torch.allclose(
        candidate_sigmoid(a @ b.T, eye, None, 1.5, -3.0), sigmoid_loss(a, b, 1.5, -3.0)
    )
    # VSE++ sums both directions: twice one direction on a symmetric matrix
    assert torch.allclose(
        2 * candidate_triplet(sym, eye, None, 0.2, "hardest"),
        triplet_from_similarity(sym, 0.2, "hardest", "sum"),
    )


def test_loss_modules_take_candidates_and_learn_their_temperature():
    scores, positive, valid = _case(0, dtype=torch.float32)
    scores.requires_grad_(True)
    for name, kw in [("info_nce", {}), ("sigmoid", {}), ("triplet", {"mining": "hardest"})]:
        loss = create_loss(name, **kw)
        out = loss.from_candidates(scores, positive, valid)
        out.loss.backward()
        assert torch.isfinite(out.loss) and scores.grad is not None
        for p in loss.parameters():
            assert p.grad is not None, name
        scores.grad = None
    with pytest.raises(ValueError, match="'sum' or 'hardest'"):
        create_loss("triplet", mining="semihard").from_candidates(scores, positive, valid)


def test_bad_candidates_are_named():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="positive must have shape"):
        candidate_info_nce(s, torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="no query has a positive"):
        candidate_info_nce(s, torch.zeros(2, 3, dtype=torch.bool))
    pos = torch.tensor([[True, False, False], [False, True, False]])
    with pytest.raises(ValueError, match="every positive must be a valid candidate"):
        candidate_sigmoid(s, pos, ~pos)
    with pytest.raises(ValueError, match="floating point"):
        candidate_triplet(torch.zeros(2, 3, dtype=torch.long), pos)
    with pytest.raises(ValueError, match="margin must be > 0"):
        candidate_triplet(s, pos, margin=0.0)
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean'"):
        candidate_triplet(s, pos, reduction="none")


# ---------------------------------------------------------------- focal loss


def _focal_loop(z: float, y: int, alpha: float, gamma: float) -> float:
    """Lin et al. 2017, eq. 5, term by term: -alpha_t (1 - p_t)^gamma log(p_t)."""
    p = 1 / (1 + math.exp(-z))
    p_t = p if y == 1 else 1 - p
    alpha_t = 1.0 if alpha < 0 else (alpha if y == 1 else 1 - alpha)
    return -alpha_t * (1 - p_t) ** gamma * math.log(p_t)


@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (0.75, 2.0), (-1.0, 0.5), (0.5, 0.0)])
def test_focal_loss_equals_the_papers_terms(alpha, gamma):
    from alignfuse.losses.focal import candidate_focal, focal_loss

    scores, positive, valid = _case(3)
    logits = scores * 4
    terms = [
        [_focal_loop(float(logits[i, j]), int(positive[i, j]), alpha, gamma) for j in range(7)]
        for i in range(5)
    ]
    full = focal_loss(logits, positive, alpha, gamma, reduction="sum")
    assert math.isclose(float(full), sum(map(sum, terms)), rel_tol=1e-12)
    # candidates: the mean over valid candidates of the queries with a positive
    kept = [terms[i][j] for i in range(5) for j in range(7) if valid[i, j] and positive[i].any()]
    got = candidate_focal(logits, positive, valid, alpha, gamma)
    assert math.isclose(float(got), sum(kept) / len(kept), rel_tol=1e-12)
    module = create_loss("focal", alpha=alpha, gamma=gamma, scale=4.0)
    assert torch.allclose(module.from_candidates(scores, positive, valid).loss, got)


def test_focal_loss_reduces_to_cross_entropy_and_down_weights_easy_examples():
    from alignfuse.losses.focal import focal_loss

    z = torch.tensor([3.0, -2.0, 0.5, 8.0], dtype=torch.float64)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits(z, y)
    assert torch.allclose(focal_loss(z, y, alpha=-1, gamma=0.0), bce)
    assert torch.allclose(focal_loss(z, y, alpha=0.5, gamma=0.0), bce / 2)
    # an example classified with p_t = 0.9 counts 100x less than in cross-entropy (gamma 2)
    easy = torch.tensor([math.log(9.0)], dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    ratio = focal_loss(easy, one, -1, 2.0) / F.binary_cross_entropy_with_logits(easy, one)
    assert math.isclose(float(ratio), 0.01, rel_tol=1e-9)
    # stable at extreme logits, and differentiable
    big = torch.tensor([60.0, -60.0, 60.0], dtype=torch.float64, requires_grad=True)
    out = focal_loss(big, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), 0.25, 2.0)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(big.grad).all()
    assert torch.autograd.gradcheck(
        lambda t: focal_loss(t, y, 0.75, 2.0), (z.clone().requires_grad_(True),)
    )


def test_focal_loss_on_embedding_pairs_and_bad_arguments():
    from alignfuse.losses.focal import focal_loss

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    loss = create_loss("focal", scale=10.0, bias=-10.0)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T * 10 - 10
    assert torch.allclose(loss(a, b).loss, focal_loss(logits, torch.eye(4), 0.25, 2.0))
    with pytest.raises(ValueError, match="alpha must be in"):
        create_loss("focal", alpha=1.5)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        create_loss("focal", gamma=float("nan"))
    with pytest.raises(ValueError, match="targets must be 0 or 1"):
        focal_loss(torch.zeros(3), torch.tensor([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match="targets must have the shape of logits"):
        focal_loss(torch.zeros(3), torch.zeros(2))
