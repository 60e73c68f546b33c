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


# ------------------------------------------------- stabilised scaling domain vs log domain


def _both(a, b, cost, **kw):
    auto = sinkhorn(a, b, cost, **kw)
    log = sinkhorn(a, b, cost, method="log", **kw)
    return auto, log


@pytest.mark.parametrize("reg", [1.0, 0.1, 0.02])
def test_scaling_domain_equals_the_log_domain_and_pot_plain(reg):
    _, _, a, b, cost = _problem(20, 40, 35)
    a[3] = 0.0  # a zero-mass source
    a /= a.sum()
    auto, log = _both(a, b, cost, reg=reg, tol=1e-11, max_iter=100000)
    assert auto.domain == "scaling" and log.domain == "log"
    assert auto.iterations == log.iterations and bool(auto.converged)
    torch.testing.assert_close(auto.plan, log.plan, atol=1e-13, rtol=1e-9)
    torch.testing.assert_close(auto.value, log.value, atol=0, rtol=1e-10)
    torch.testing.assert_close(auto.f[a > 0], log.f[a > 0], atol=1e-9, rtol=1e-9)
    assert float(auto.plan[3].abs().max()) == 0.0
    # POT's plain (scaling) solver, on weights it can divide by
    _, _, a, b, cost = _problem(25, 40, 35)
    plain = ot.sinkhorn(a, b, cost, reg, method="sinkhorn", stopThr=1e-11, numItermax=100000)
    ours = sinkhorn(a, b, cost, reg=reg, tol=1e-11, max_iter=100000)
    np.testing.assert_allclose(ours.plan.numpy(), plain, atol=1e-12)


def test_scaling_domain_unbalanced_and_batched_equal_the_log_domain():
    probs = [_problem(s) for s in (21, 22)]
    a = torch.tensor(np.stack([p[2] for p in probs]))
    b = torch.tensor(np.stack([2 * p[3] for p in probs]))
    c = torch.tensor(np.stack([p[4] for p in probs]))
    for reg_m in (0.5, 5.0):
        auto, log = _both(a, b, c, reg=0.05, reg_m=reg_m, tol=1e-12, max_iter=100000)
        assert auto.domain == "scaling" and auto.iterations == log.iterations
        torch.testing.assert_close(auto.plan, log.plan, atol=1e-13, rtol=1e-9)
        torch.testing.assert_close(auto.value, log.value, atol=0, rtol=1e-10)
    # balanced, batched
    a2 = torch.tensor(np.stack([p[2] for p in probs]))
    b2 = torch.tensor(np.stack([p[3] for p in probs]))
    auto, log = _both(a2, b2, c, reg=0.05, tol=1e-12, max_iter=100000)
    torch.testing.assert_close(auto.plan, log.plan, atol=1e-13, rtol=1e-9)


def test_float32_scalings_are_absorbed_and_stay_right():
    # float32 scalings leave [1e-10, 1e10] at this reg and are absorbed into the kernel
    _, _, a, b, cost = _problem(23, 30, 30)
    ref = sinkhorn(a, b, cost, reg=0.03, method="log", tol=1e-12, max_iter=100000)
    res = sinkhorn(
        torch.tensor(a).float(),
        torch.tensor(b).float(),
        torch.tensor(cost).float(),
        reg=0.03,
        tol=1e-6,
        max_iter=100000,
    )
    assert res.domain == "scaling" and bool(res.converged)
    torch.testing.assert_close(res.plan.double(), ref.plan, atol=2e-6, rtol=0)


def test_small_reg_where_plain_scaling_fails():
    # C / reg up to ~4,700: exp(-C / reg) underflows, and POT's plain solver stops far from
    # the marginals; the absorbed kernel keeps every entry of the plan representable
    _, _, a, b, cost = _problem(24, 30, 30)
    assert cost.max() / 0.01 > 1000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ot.sinkhorn(a, b, cost, 0.01, method="sinkhorn", numItermax=5000)
    assert np.abs(np.nan_to_num(plain).sum(0) - b).max() > 1e-2
    auto, log = _both(a, b, cost, reg=0.01, tol=1e-9, max_iter=50000)
    assert auto.domain == "scaling" and bool(auto.converged)
    assert auto.iterations == log.iterations
    torch.testing.assert_close(auto.plan, log.plan, atol=1e-13, rtol=1e-9)


def test_an_overflowing_scaling_falls_back_to_the_log_domain(monkeypatch):
    # a kernel column that underflowed to zero (simulated: one product comes back zero)
    # makes a scaling infinite; the solve continues in the log domain from the last finite
    # iterate and ends where the log domain alone does
    _, _, a, b, cost = _problem(26, 30, 30)
    log = sinkhorn(a, b, cost, reg=0.05, tol=1e-10, max_iter=100000, method="log")
    import alignfuse._matmul as mm

    real_bvm, calls = mm.bvm, [0]

    def flaky_bvm(vec, mat):  # K^T su, the products the column scalings divide by
        out = real_bvm(vec, mat)
        calls[0] += 1
        if calls[0] == 5:
            out = out.clone()
            out.view(-1)[0] = 0.0
        return out

    monkeypatch.setattr(mm, "bvm", flaky_bvm)
    auto = sinkhorn(a, b, cost, reg=0.05, tol=1e-10, max_iter=100000)
    assert calls[0] == 5 and auto.domain == "scaling+log" and bool(auto.converged)
    assert abs(auto.iterations - log.iterations) <= 10  # up to one check interval
    torch.testing.assert_close(auto.plan, log.plan, atol=1e-11, rtol=1e-8)


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be 'auto' or 'log'"):
        sinkhorn(None, None, np.zeros((3, 3)), reg=0.1, method="fast")
