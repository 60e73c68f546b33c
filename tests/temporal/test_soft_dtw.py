"""Soft-DTW: value and gradient against tslearn, gradcheck, the gamma -> 0 limit, the
divergence, variable lengths, and the torch path against the compiled path."""

import numpy as np
import pytest
import torch

from alignfuse.temporal import SoftDTWLoss, dtw, soft_dtw, soft_dtw_alignment, soft_dtw_divergence

tm = pytest.importorskip("tslearn.metrics")


@pytest.mark.parametrize("gamma", [1.0, 0.1, 0.01])
@pytest.mark.parametrize(("n", "m", "d"), [(12, 9, 2), (20, 20, 1), (5, 31, 4)])
def test_value_and_alignment_match_tslearn(gamma, n, m, d):
    rng = np.random.default_rng(n + m + d)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    ref = tm.soft_dtw(x, y, gamma=gamma)
    ref_a, ref_v = tm.soft_dtw_alignment(x, y, gamma=gamma)
    for backend in ("numba", "torch"):
        assert float(soft_dtw(x, y, gamma=gamma, backend=backend)) == pytest.approx(ref, rel=1e-10)
        a, v = soft_dtw_alignment(x, y, gamma=gamma, backend=backend)
        np.testing.assert_allclose(a.numpy(), ref_a, atol=1e-10)
        assert float(v) == pytest.approx(ref_v, rel=1e-10)


def test_gradient_matches_tslearn_pytorch_loss():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 15, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 11, 2, generator=g, dtype=torch.float64)
    ref_x = x.detach().clone().requires_grad_(True)
    tm.SoftDTWLossPyTorch(gamma=0.3)(ref_x, y).sum().backward()
    soft_dtw(x, y, gamma=0.3).sum().backward()
    # tslearn passes its accumulated matrix through torch.Tensor(...), i.e. float32, so its
    # gradient is float32-accurate; ours passes gradcheck in float64 (below)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_gradcheck_float64_with_variable_lengths(backend):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    xl, yl = torch.tensor([7, 4, 2]), torch.tensor([6, 6, 3])

    def f(a, b):
        return soft_dtw(a, b, gamma=0.5, x_lengths=xl, y_lengths=yl, backend=backend)

    assert torch.autograd.gradcheck(f, (x, y))
    assert torch.autograd.gradgradcheck(f, (x, y)) if backend == "torch" else True


def test_variable_lengths_equal_per_pair_values():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 12, 2, generator=g, dtype=torch.float64)
    y = torch.randn(3, 10, 2, generator=g, dtype=torch.float64)
    xl, yl = torch.tensor([12, 7, 5]), torch.tensor([10, 10, 3])
    ref = [tm.soft_dtw(x[i, : xl[i]].numpy(), y[i, : yl[i]].numpy(), gamma=0.5) for i in range(3)]
    for backend in ("numba", "torch"):
        got = soft_dtw(x, y, gamma=0.5, x_lengths=xl, y_lengths=yl, backend=backend)
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)
    a, _ = soft_dtw_alignment(x, y, gamma=0.5, x_lengths=xl, y_lengths=yl)
    assert float(a[1, 7:].abs().sum()) == 0.0 and float(a[2, :, 3:].abs().sum()) == 0.0


def test_padding_values_do_not_matter():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 7, 3, generator=g, dtype=torch.float64)
    xl, yl = torch.tensor([5, 9]), torch.tensor([7, 4])
    ref = soft_dtw(x, y, gamma=0.3, x_lengths=xl, y_lengths=yl)
    (gref,) = torch.autograd.grad(ref.sum(), x)
    x2 = x.detach().clone()
    x2[0, 5:] = float("nan")
    y2 = y.clone()
    y2[1, 4:] = float("inf")
    x2.requires_grad_(True)
    for backend in ("numba", "torch"):
        out = soft_dtw(x2, y2, gamma=0.3, x_lengths=xl, y_lengths=yl, backend=backend)
        torch.testing.assert_close(out, ref.detach())
        (gx,) = torch.autograd.grad(out.sum(), x2)
        torch.testing.assert_close(gx[0, :5], gref[0, :5])
        assert float(gx[0, 5:].abs().sum()) == 0.0
    for metric in ("cityblock",):
        torch.testing.assert_close(
            soft_dtw(x2, y2, gamma=0.3, x_lengths=xl, y_lengths=yl, metric=metric),
            soft_dtw(x, y, gamma=0.3, x_lengths=xl, y_lengths=yl, metric=metric).detach(),
        )


def test_tends_to_dtw_as_gamma_vanishes():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(15, 2)), rng.normal(size=(18, 2))
    hard = float(dtw(x, y)) ** 2  # soft-DTW is not square-rooted
    gaps = [abs(float(soft_dtw(x, y, gamma=g)) - hard) for g in (1.0, 0.1, 0.01, 0.001)]
    assert gaps == sorted(gaps, reverse=True)
    assert gaps[-1] < 0.01
    # soft-DTW lower-bounds DTW by at most gamma log(3) per step of the longest path
    assert float(soft_dtw(x, y, gamma=0.1)) <= hard


def test_alignment_is_a_distribution_over_paths():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, 1)), rng.normal(size=(11, 1))
    a, _ = soft_dtw_alignment(x, y, gamma=0.2)
    assert float(a[0, 0]) == pytest.approx(1.0) and float(a[-1, -1]) == pytest.approx(1.0)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 + 1e-12


def test_divergence_is_zero_on_itself_and_positive_elsewhere():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(4, 13, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        soft_dtw_divergence(x, x, gamma=0.5), torch.zeros(4, dtype=torch.float64)
    )
    assert (soft_dtw_divergence(x, y, gamma=0.5) > 0).all()
    xx, yy, xy = (
        tm.soft_dtw(x[0].numpy(), x[0].numpy(), gamma=0.5),
        tm.soft_dtw(y[0].numpy(), y[0].numpy(), gamma=0.5),
        tm.soft_dtw(x[0].numpy(), y[0].numpy(), gamma=0.5),
    )
    assert float(soft_dtw_divergence(x[0], y[0], gamma=0.5)) == pytest.approx(xy - (xx + yy) / 2)


def test_loss_module_reductions_and_training_step():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(5, 10, 2, generator=g, requires_grad=True)
    y = torch.randn(5, 12, 2, generator=g)
    per = SoftDTWLoss(0.1, reduction="none")(x, y)
    assert per.shape == (5,)
    mean, total = SoftDTWLoss(0.1)(x, y).detach(), SoftDTWLoss(0.1, reduction="sum")(x, y)
    assert float(mean) == pytest.approx(float(per.detach().mean()), rel=1e-6)
    assert float(total.detach()) == pytest.approx(float(per.detach().sum()), rel=1e-6)
    opt = torch.optim.SGD([x], lr=0.05)
    loss_fn = SoftDTWLoss(0.1, normalize=True)
    before = float(loss_fn(x, y).detach())
    for _ in range(20):
        opt.zero_grad()
        loss_fn(x, y).backward()
        opt.step()
    assert float(loss_fn(x, y).detach()) < before
    assert "gamma=0.1" in repr(loss_fn)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: soft_dtw(np.zeros(3), np.zeros(4), gamma=0.0), "gamma must be a positive"),
        (lambda: soft_dtw(np.zeros(3), np.zeros(4), gamma=-1), "gamma must be a positive"),
        (lambda: SoftDTWLoss(gamma=float("nan")), "gamma must be a positive"),
        (lambda: SoftDTWLoss(reduction="max"), "reduction"),
        (lambda: soft_dtw(np.zeros((3, 2)), np.zeros((4, 1))), "same number of features"),
        (lambda: soft_dtw(np.zeros(3), np.array([1.0, np.nan])), "y contains NaN"),
        (lambda: soft_dtw(np.zeros(0), np.zeros(4)), "empty series"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_inlined_exp_and_log_match_numpy():
    from numba import njit

    from alignfuse.temporal._kernels import exp_nonpos, log_1_3

    @njit
    def both(x, s):
        a = np.empty_like(x)
        b = np.empty_like(s)
        for i in range(x.size):
            a[i] = exp_nonpos(x[i])
            b[i] = log_1_3(s[i])
        return a, b

    rng = np.random.default_rng(0)
    x = np.concatenate([-rng.random(100_000) * 700, [0.0, -1e-300, -0.3466, -699.9]])
    s = np.concatenate([1 + 2 * rng.random(100_000), [1.0, 3.0, np.sqrt(2), 1 + 1e-12]])
    a, b = both(x, s)
    np.testing.assert_allclose(a, np.exp(x), rtol=1e-14)
    np.testing.assert_allclose(b, np.log(s), rtol=1e-14, atol=1e-16)
