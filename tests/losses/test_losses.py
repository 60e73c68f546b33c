"""Each loss against a plain-loop re-implementation written from the paper's equations."""

import math

import pytest
import torch
import torch.nn.functional as F

import alignfuse
from alignfuse.losses import InfoNCELoss, TripletLoss, info_nce, triplet
from alignfuse.outputs import LossOutput


def _pairs(n=6, d=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def _cos(u, v):
    return sum(x * y for x, y in zip(u, v, strict=True)) / (
        math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
    )


def naive_info_nce(a, b, tau):
    a, b = a.tolist(), b.tolist()
    n = len(a)
    s = [[_cos(a[i], b[j]) / tau for j in range(n)] for i in range(n)]
    i2t = -sum(s[i][i] - math.log(sum(math.exp(s[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = -sum(s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(n))) for j in range(n)) / n
    return (i2t + t2i) / 2


def clip_paper_reference(a, b, t):
    """The pseudo-code of Radford et al. 2021, Figure 3, written out."""
    i_e = a / a.norm(dim=1, keepdim=True)
    t_e = b / b.norm(dim=1, keepdim=True)
    logits = i_e @ t_e.T * math.exp(t)
    labels = torch.arange(len(a))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def naive_triplet(a, b, margin, hardest):
    a, b = a.tolist(), b.tolist()
    n = len(a)
    s = [[_cos(a[i], b[j]) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        c_b = [max(0.0, margin - s[i][i] + s[i][j]) for j in range(n) if j != i]
        c_a = [max(0.0, margin - s[i][i] + s[j][i]) for j in range(n) if j != i]
        total += (max(c_b) + max(c_a)) if hardest else (sum(c_b) + sum(c_a))
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_info_nce_matches_loop(dtype, tau):
    a, b = _pairs(dtype=dtype)
    got = info_nce(a, b, math.log(1 / tau))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert got.dtype == dtype
    assert float(got) == pytest.approx(naive_info_nce(a, b, tau), rel=tol, abs=tol)


def test_info_nce_matches_clip_pseudocode():
    a, b = _pairs(n=9, d=7, dtype=torch.float64, seed=3)
    t = math.log(1 / 0.07)
    assert torch.allclose(info_nce(a, b, t), clip_paper_reference(a, b, t))


def test_info_nce_reductions():
    a, b = _pairs()
    per = info_nce(a, b, 1.0, reduction="none")
    assert per.shape == (6,)
    assert torch.allclose(per.mean(), info_nce(a, b, 1.0))
    assert torch.allclose(per.sum(), info_nce(a, b, 1.0, reduction="sum"))


def test_info_nce_gradcheck():
    a, b = _pairs(n=4, d=3)
    a.requires_grad_(True)
    b.requires_grad_(True)
    scale = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y, s: info_nce(x, y, s), (a, b, scale))


def test_info_nce_module_learns_and_clamps_temperature():
    loss = InfoNCELoss(temperature=0.001, max_scale=100.0)
    a, b = _pairs(dtype=torch.float32)
    out = loss(a, b)
    assert isinstance(out, LossOutput)
    assert out.logs["temperature"] == pytest.approx(0.01)  # clamped at 1 / max_scale
    assert float(out.loss.detach()) == pytest.approx(naive_info_nce(a, b, 0.01), rel=1e-4)
    loss2 = InfoNCELoss()
    loss2(a, b).loss.backward()
    assert loss2.logit_scale.grad is not None and torch.isfinite(loss2.logit_scale.grad)
    assert not any(p.requires_grad for p in InfoNCELoss(learnable=False).parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hardest", [False, True])
@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
def test_triplet_matches_loop(dtype, hardest, margin):
    a, b = _pairs(n=7, dtype=dtype, seed=1)
    got = triplet(a, b, margin, "hardest" if hardest else "sum")
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert float(got) == pytest.approx(naive_triplet(a, b, margin, hardest), rel=tol, abs=tol)


def test_triplet_hardest_is_at_most_sum_and_zero_when_separated():
    a, b = _pairs()
    assert triplet(a, b, 0.2, "hardest") <= triplet(a, b, 0.2, "sum")
    eye = torch.eye(4)
    assert float(triplet(eye, eye, 0.5, "hardest")) == 0.0


def test_triplet_gradcheck():
    a, b = _pairs(n=4, d=3, seed=5)
    a.requires_grad_(True)
    b.requires_grad_(True)
    for mining in ("sum", "hardest"):
        assert torch.autograd.gradcheck(lambda x, y, m=mining: triplet(x, y, 0.3, m), (a, b))


@pytest.mark.parametrize("name", ["info_nce", "triplet"])
def test_registry_contract(name):
    """Every registered loss: finite scalar, finite gradients, dtype kept, order invariant."""
    loss = alignfuse.create_loss(name)
    for dtype in (torch.float32, torch.float64):
        loss = loss.to(dtype)
        a, b = _pairs(n=8, dtype=dtype, seed=2)
        a.requires_grad_(True)
        out = loss(a, b)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.loss.dtype == dtype
        out.loss.backward()
        assert torch.isfinite(a.grad).all()
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
        again = loss(a.detach()[perm], b[perm]).loss
        assert torch.allclose(again, out.loss.detach())


@pytest.mark.parametrize("fn", [info_nce, triplet])
def test_bad_inputs(fn):
    a, b = _pairs()
    with pytest.raises(ValueError, match="same number of pairs"):
        fn(a, b[:4])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        fn(a[:1], b[:1])
    with pytest.raises(ValueError, match="differ in width"):
        fn(a, b[:, :3])
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="a contains NaN"):
        fn(bad, b)
    with pytest.raises(ValueError, match="zero-norm"):
        fn(torch.zeros_like(a), b)
    with pytest.raises(ValueError, match="empty batch"):
        fn(a[:0], b[:0])
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        fn(a[0], b[0])
    with pytest.raises(ValueError, match="reduction"):
        fn(a, b, reduction="avg")


def test_bad_hyperparameters():
    a, b = _pairs()
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError, match="margin must be > 0"):
        TripletLoss(margin=-1)
    with pytest.raises(ValueError, match="mining"):
        triplet(a, b, mining="semi")


def test_triplet_sum_warmup_then_hardest_and_counter_is_checkpointed():
    a, b = _pairs(n=6, seed=4)
    loss = TripletLoss(margin=0.3, mining="hardest", sum_warmup=2)
    expect_sum, expect_hard = triplet(a, b, 0.3, "sum"), triplet(a, b, 0.3, "hardest")
    got = [loss(a, b).loss for _ in range(3)]
    assert torch.allclose(got[0], expect_sum) and torch.allclose(got[1], expect_sum)
    assert torch.allclose(got[2], expect_hard)
    assert int(loss.state_dict()["num_calls"]) == 3
    with torch.no_grad():  # evaluation does not advance the warm-up
        loss(a, b)
    loss.eval()
    loss(a, b)
    assert int(loss.num_calls) == 3
    fresh = TripletLoss(margin=0.3, mining="hardest", sum_warmup=2)
    fresh.load_state_dict(loss.state_dict())
    fresh.train()
    assert torch.allclose(fresh(a, b).loss, expect_hard)
