"""Optimal transport against POT: Sinkhorn (balanced, unbalanced), the Sinkhorn divergence,
entropic GW and fused GW; marginals, duality, gradients, batching and bad input."""

import warnings

import numpy as np
import pytest
import torch

from alignfuse.errors import ConvergenceWarning
from alignfuse.transport import (
    entropic_fused_gromov_wasserstein,
    entropic_gromov_wasserstein,
    sinkhorn,
    sinkhorn_divergence,
)

ot = pytest.importorskip("ot")


def _problem(seed, n=30, m=25):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 1
    a, b = rng.random(n) + 0.1, rng.random(m) + 0.1
    return x, y, a / a.sum(), b / b.sum(), ot.dist(x, y)


@pytest.mark.parametrize("reg", [1.0, 0.1, 0.05])
def test_sinkhorn_matches_pot(reg):
    _x, _y, a, b, cost = _problem(0)
    ref = ot.sinkhorn(a, b, cost, reg, method="sinkhorn_log", stopThr=1e-10, numItermax=100000)
    ref_cost = ot.sinkhorn2(
        a, b, cost, reg, method="sinkhorn_log", stopThr=1e-10, numItermax=100000
    )
    res = sinkhorn(a, b, cost, reg=reg, tol=1e-10, max_iter=100000)
    # both stop at the same tolerance; this solve ends with one more (differentiable) update
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-11)
    assert float(res.cost) == pytest.approx(float(ref_cost), rel=1e-8)
    assert bool(res.converged)
    # marginals
    np.testing.assert_allclose(res.plan.sum(1).numpy(), a, atol=1e-10)
    np.testing.assert_allclose(res.plan.sum(0).numpy(), b, atol=1e-10)
    # strong duality: the dual value equals the primal entropic objective
    p = res.plan.numpy()
    pos = p > 0
    primal = (p * cost).sum() + reg * (p[pos] * np.log(p[pos] / np.outer(a, b)[pos])).sum()
    assert float(res.value) == pytest.approx(primal, rel=1e-9)
    # the plan is a_i b_j exp((f_i + g_j - C_ij) / reg)
    rebuilt = np.outer(a, b) * np.exp((res.f.numpy()[:, None] + res.g.numpy()[None] - cost) / reg)
    np.testing.assert_allclose(rebuilt, p, atol=1e-12)


def test_unbalanced_matches_pot():
    _, _, a, b, cost = _problem(1)
    b = 2 * b  # different masses
    for reg_m in (0.5, 5.0):
        ref = ot.unbalanced.sinkhorn_unbalanced(
            a, b, cost, 0.1, reg_m, stopThr=1e-13, numItermax=100000
        )
        res = sinkhorn(a, b, cost, reg=0.1, reg_m=reg_m, tol=1e-13, max_iter=100000)
        np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-11)


def test_batched_equals_separate_solves():
    probs = [_problem(s) for s in (2, 3, 4)]
    a = torch.tensor(np.stack([p[2] for p in probs]))
    b = torch.tensor(np.stack([p[3] for p in probs]))
    c = torch.tensor(np.stack([p[4] for p in probs]))
    res = sinkhorn(a, b, c, reg=0.1, tol=1e-12, max_iter=10000)
    for i in range(3):
        one = sinkhorn(a[i], b[i], c[i], reg=0.1, tol=1e-12, max_iter=10000)
        torch.testing.assert_close(res.plan[i], one.plan, atol=1e-12, rtol=0)
    assert res.converged.shape == (3,)


def test_gradient_of_value_is_the_plan():
    _, _, a, b, cost = _problem(5)
    c = torch.tensor(cost, requires_grad=True)
    res = sinkhorn(a, b, c, reg=0.2, tol=1e-12, max_iter=10000)
    (g,) = torch.autograd.grad(res.value, c)
    torch.testing.assert_close(g, res.plan.detach(), atol=1e-10, rtol=0)


def test_plan_is_near_exact_ot_for_small_reg():
    _, _, a, b, cost = _problem(6, 12, 12)
    exact = ot.emd2(a, b, cost)
    res = sinkhorn(a, b, cost, reg=0.005, tol=1e-10, max_iter=200000)
    assert float(res.cost) == pytest.approx(exact, rel=1e-2)


def test_divergence_matches_pot_and_vanishes_on_itself():
    x, y, a, b, _ = _problem(7)
    ref = ot.bregman.empirical_sinkhorn_divergence(
        x, y, 0.5, a, b, stopThr=1e-12, numIterMax=100000
    )
    ours = sinkhorn_divergence(
        x, y, a, b, reg=0.5, debias_value="linear", tol=1e-12, max_iter=100000
    )
    assert float(ours) == pytest.approx(float(ref), rel=1e-7)
    assert abs(float(sinkhorn_divergence(x, x, a, a, reg=0.5))) < 1e-10
    assert float(sinkhorn_divergence(x, y, a, b, reg=0.5)) > 0
    shifted = [float(sinkhorn_divergence(x, x + s, a, a, reg=0.5)) for s in (0.1, 0.5, 1.0)]
    assert shifted == sorted(shifted)


def test_gromov_wasserstein_matches_pot():
    x, y, a, b, _ = _problem(8, 20, 15)
    c1, c2 = ot.dist(x, x), ot.dist(y, y)
    c1, c2 = c1 / c1.max(), c2 / c2.max()
    ref, log = ot.gromov.entropic_gromov_wasserstein(
        c1, c2, a, b, epsilon=0.05, log=True, tol=1e-11, max_iter=2000
    )
    res = entropic_gromov_wasserstein(c1, c2, a, b, epsilon=0.05, tol=1e-11, max_iter=2000)
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-9)
    assert float(res.value) == pytest.approx(log["gw_dist"], rel=1e-7)
    np.testing.assert_allclose(res.plan.sum(1).numpy(), a, atol=1e-9)


def test_gromov_wasserstein_recovers_a_permutation():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(10, 3))
    perm = rng.permutation(10)
    y = x[perm] @ np.linalg.qr(rng.normal(size=(3, 3)))[0]  # rotated and shuffled copy
    c1, c2 = ot.dist(x, x), ot.dist(y, y)
    res = entropic_gromov_wasserstein(
        c1 / c1.max(), c2 / c2.max(), epsilon=0.002, max_iter=500, warn=False
    )
    assert res.plan.argmax(1).tolist() == np.argsort(perm).tolist()


def test_fused_gromov_wasserstein_matches_pot():
    x, y, a, b, cost = _problem(10, 18, 16)
    c1, c2 = ot.dist(x, x), ot.dist(y, y)
    c1, c2, m = c1 / c1.max(), c2 / c2.max(), cost / cost.max()
    ref, log = ot.gromov.entropic_fused_gromov_wasserstein(
        m, c1, c2, a, b, epsilon=0.05, alpha=0.3, log=True, tol=1e-11, max_iter=2000
    )
    res = entropic_fused_gromov_wasserstein(
        m, c1, c2, a, b, alpha=0.3, epsilon=0.05, tol=1e-11, max_iter=2000
    )
    np.testing.assert_allclose(res.plan.numpy(), ref, atol=1e-9)
    assert float(res.value) == pytest.approx(log["fgw_dist"], rel=1e-7)


def test_not_converged_warns_and_says_so():
    _, _, a, b, cost = _problem(11)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = sinkhorn(a, b, cost, reg=0.01, max_iter=3)
    assert not bool(res.converged) and res.iterations == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn(a, b, cost, reg=0.01, max_iter=3, warn=False)


def test_float32_and_dtype_kept():
    _, _, a, _b, cost = _problem(12)
    res = sinkhorn(
        torch.tensor(a, dtype=torch.float32),
        None,
        torch.tensor(cost, dtype=torch.float32),
        reg=0.1,
        tol=1e-5,
    )
    assert res.plan.dtype == torch.float32 and bool(res.converged)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: sinkhorn(None, None, np.zeros((3, 3)), reg=0.0), "reg .* must be a positive"),
        (lambda: sinkhorn(None, None, np.zeros((3, 3)), reg=-1.0), "reg .* must be a positive"),
        (lambda: sinkhorn([0.5, 0.5, 0.5], None, np.zeros((3, 3)), reg=0.1), "same total mass"),
        (lambda: sinkhorn([0.5, 0.5], None, np.zeros((3, 3)), reg=0.1), "a must have shape"),
        (lambda: sinkhorn([-0.5, 1.0, 0.5], None, np.zeros((3, 3)), reg=0.1), "non-negative"),
        (lambda: sinkhorn(None, None, np.full((3, 3), np.nan), reg=0.1), "cost contains NaN"),
        (lambda: sinkhorn(None, None, np.zeros((0, 3)), reg=0.1), "cost is empty"),
        (lambda: sinkhorn(None, None, np.zeros(3), reg=0.1), "cost must be"),
        (lambda: sinkhorn(None, None, np.zeros((3, 3)), reg=0.1, reg_m=0.0), "reg_m"),
        (lambda: sinkhorn(None, None, np.zeros((3, 3)), reg=0.1, max_iter=0), "max_iter"),
        (
            lambda: entropic_gromov_wasserstein(np.zeros((3, 2)), np.zeros((3, 3))),
            "C1 must be a square",
        ),
        (
            lambda: entropic_fused_gromov_wasserstein(
                np.zeros((3, 3)), np.zeros((3, 3)), np.zeros((2, 2))
            ),
            "M must have shape",
        ),
        (
            lambda: entropic_fused_gromov_wasserstein(
                np.zeros((3, 3)), np.eye(3), np.eye(3), alpha=2.0
            ),
            "alpha",
        ),
        (lambda: sinkhorn_divergence(np.zeros((3, 2)), np.zeros((3, 3)), reg=0.1), "same d"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_default_tolerance_follows_the_dtype():
    _, _, a, b, cost = _problem(13)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = sinkhorn(
            torch.tensor(a).float(), torch.tensor(b).float(), torch.tensor(cost).float(), reg=0.5
        )
    assert bool(res.converged) and float(res.marginal_error) <= 1e-6
    res64 = sinkhorn(a, b, cost, reg=0.5)
    assert float(res64.marginal_error) <= 1e-9
