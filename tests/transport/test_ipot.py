"""IPOT against POT's exact solver (ot.emd2), padding, batching; UNITER's WRA distance and
loss against loops and their definitions; bad input."""

import numpy as np
import ot
import pytest
import torch

from alignfuse.transport.ipot import ipot, word_region_alignment_loss, word_region_distance


def _problem(n, m, seed, uniform=True):
    rng = np.random.default_rng(seed)
    cost = rng.uniform(0, 1, size=(n, m))
    a = np.full(n, 1 / n) if uniform else rng.uniform(0.1, 1, n)
    b = np.full(m, 1 / m) if uniform else rng.uniform(0.1, 1, m)
    return a / a.sum(), b / b.sum(), cost


@pytest.mark.parametrize(("n", "m", "uniform"), [(5, 5, True), (6, 9, True), (7, 4, False)])
def test_ipot_reaches_the_exact_transport_cost(n, m, uniform):
    for seed in range(3):
        a, b, cost = _problem(n, m, seed, uniform)
        exact = ot.emd2(a, b, cost)
        res = ipot(
            torch.tensor(a), torch.tensor(b), torch.tensor(cost), beta=0.1, max_iter=2000, inner=5
        )
        # near-degenerate problems converge slowly (one here: 1.7e-6 at 2,000 steps, 2e-9 at
        # 10,000); most reach 1e-16
        assert abs(float(res.cost) - exact) < 1e-5
        assert float(res.marginal_error) < 1e-6
        torch.testing.assert_close(res.plan.sum(1), torch.tensor(a), rtol=0, atol=1e-6)


def test_ipot_padding_and_batching():
    a, b, cost = _problem(4, 6, 0)
    ref = ipot(torch.tensor(a), torch.tensor(b), torch.tensor(cost), max_iter=80)
    # pad both sides with zero-weight rows / columns of arbitrary cost
    pc = np.pad(cost, ((0, 2), (0, 3)), constant_values=5.0)
    pa, pb = np.pad(a, (0, 2)), np.pad(b, (0, 3))
    padded = ipot(torch.tensor(pa), torch.tensor(pb), torch.tensor(pc), max_iter=80)
    torch.testing.assert_close(padded.plan[:4, :6], ref.plan)
    assert float(padded.plan[4:].abs().sum() + padded.plan[:, 6:].abs().sum()) == 0
    torch.testing.assert_close(padded.cost, ref.cost)
    # a batch equals one solve per problem; unnormalised weights are normalised
    costs = torch.stack([torch.tensor(_problem(4, 6, s)[2]) for s in range(3)])
    batch = ipot(torch.tensor(a) * 3, None, costs, max_iter=60)
    for s in range(3):
        one = ipot(torch.tensor(a), None, costs[s], max_iter=60)
        torch.testing.assert_close(batch.plan[s], one.plan)
        torch.testing.assert_close(batch.cost[s], one.cost)


def test_ipot_bad_input():
    cost = torch.rand(3, 4)
    with pytest.raises(ValueError, match="reg"):
        ipot(None, None, cost, beta=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        ipot(None, None, cost, max_iter=0)
    with pytest.raises(ValueError, match="inner must be a positive integer"):
        ipot(None, None, cost, inner=0)
    with pytest.raises(ValueError, match="NaN"):
        ipot(None, None, torch.full((3, 4), float("nan")))
    with pytest.raises(ValueError, match="underflow"):
        ipot(None, None, cost * 1000, beta=0.01)
    with pytest.raises(ValueError, match="a must have shape"):
        ipot(torch.ones(2), None, cost)


def test_word_region_distance_matches_a_loop_over_pairs():
    g = torch.Generator().manual_seed(0)
    words = torch.randn(3, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    regions = torch.randn(3, 4, 8, generator=g, dtype=torch.float64)
    wmask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]]).bool()
    rmask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]).bool()
    d = word_region_distance(words, regions, wmask, rmask, max_iter=1000, beta=0.1)
    for i in range(3):
        w, r = words[i, wmask[i]].detach().numpy(), regions[i, rmask[i]].numpy()
        cos = (w / np.linalg.norm(w, axis=1, keepdims=True)) @ (
            r / np.linalg.norm(r, axis=1, keepdims=True)
        ).T
        exact = ot.emd2(np.full(len(w), 1 / len(w)), np.full(len(r), 1 / len(r)), 1 - cos)
        assert abs(float(d[i].detach()) - exact) < 1e-6
    # the plan is constant: the gradient of d is the plan-weighted gradient of the cost
    d.sum().backward()
    assert words.grad is not None and torch.isfinite(words.grad).all()
    assert float(words.grad[1, 3:].abs().sum()) == 0  # padded words get no gradient
    x = words.detach().clone().requires_grad_(True)
    with torch.no_grad():
        plan = torch.stack(
            [
                ipot(
                    wmask[i].double(),
                    rmask[i].double(),
                    1
                    - torch.nn.functional.normalize(words[i], dim=-1)
                    @ torch.nn.functional.normalize(regions[i], dim=-1).T,
                    beta=0.1,
                    max_iter=1000,
                ).plan
                for i in range(3)
            ]
        )
    cost = 1 - torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(
        regions, dim=-1
    ).transpose(1, 2)
    (plan * cost).sum().backward()
    torch.testing.assert_close(words.grad, x.grad)


def test_wra_loss_pulls_positives_and_pushes_negatives():
    d = torch.tensor([0.2, 0.9, 0.4, 0.7])
    pos = torch.tensor([1, 0, 1, 0])
    torch.testing.assert_close(
        word_region_alignment_loss(d, pos), torch.tensor((0.2 + 0.4 - 0.9 - 0.7) / 4)
    )
    with pytest.raises(ValueError, match="one shape"):
        word_region_alignment_loss(d, pos[:3])
    with pytest.raises(ValueError, match="NaN"):
        word_region_distance(torch.full((2, 3, 4), float("nan")), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match="masks every token"):
        word_region_distance(torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.zeros(2, 3).bool())
    with pytest.raises(ValueError, match="agree"):
        word_region_distance(torch.randn(2, 3, 4), torch.randn(2, 2, 5))
