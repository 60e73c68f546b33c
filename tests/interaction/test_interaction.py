"""Interaction scorers: SCAN against a naive loop written from the paper's equations, chunking,
masks, the registry contract and bad input."""

import pytest
import torch

import alignfuse
from alignfuse.interaction import DIME, IMRAM, SCAN, LateInteraction, scan_similarity


def naive_scan(v, e, direction, aggregation, l1, l2, vm=None, em=None, eps=1e-8):
    """Every pair, every query token, explicit attended vectors (Lee et al. 2018, eqs. 1-4)."""
    v, e = v.detach(), e.detach()
    out = torch.zeros(v.shape[0], e.shape[0], dtype=v.dtype)
    for a in range(v.shape[0]):
        for b in range(e.shape[0]):
            regions = v[a] if vm is None else v[a][vm[a]]
            words = e[b] if em is None else e[b][em[b]]
            q, k = (words, regions) if direction == "t2i" else (regions, words)
            s = torch.zeros(len(q), len(k), dtype=v.dtype)
            for j in range(len(q)):
                for i in range(len(k)):
                    s[j, i] = torch.dot(q[j], k[i]) / (q[j].norm() * k[i].norm())
            sp = s.clamp_min(0)
            sn = sp / (sp.pow(2).sum(0, keepdim=True).sqrt() + eps)  # over the query tokens
            rel = []
            for j in range(len(q)):
                w = torch.exp(l1 * sn[j])
                w = w / w.sum()
                attended = (w[:, None] * k).sum(0)
                rel.append(torch.dot(q[j], attended) / (q[j].norm() * attended.norm()))
            r = torch.stack(rel)
            out[a, b] = (
                r.mean() if aggregation == "avg" else torch.log(torch.exp(l2 * r).sum()) / l2
            )
    return out


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("aggregation", ["lse", "avg"])
@pytest.mark.parametrize("tracked", [False, True])
def test_scan_equals_the_naive_loop(direction, aggregation, tracked):
    # tracked: inputs that need grad take the autograd route (no workspace buffers)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 5, 4, generator=g, dtype=torch.float64).requires_grad_(tracked)
    e = torch.randn(4, 6, 4, generator=g, dtype=torch.float64)
    vm = torch.ones(3, 5, dtype=torch.bool)
    vm[1, 3:] = False
    em = torch.ones(4, 6, dtype=torch.bool)
    em[2, 2:] = False
    scan = SCAN(direction, aggregation, chunk_images=2, chunk_captions=3)
    l1, l2 = scan.lambda_softmax, scan.lambda_lse
    ref = naive_scan(v, e, direction, aggregation, l1, l2, vm, em)
    torch.testing.assert_close(scan(v, e, vm, em), ref, atol=1e-12, rtol=0)
    # padding on one side only (the other side's masks are skipped)
    for masks in ((vm, None), (None, em)):
        ref = naive_scan(v, e, direction, aggregation, l1, l2, *masks)
        torch.testing.assert_close(scan(v, e, *masks), ref, atol=1e-12, rtol=0)
    # no masks: chunk sizes do not matter
    full = SCAN(direction, aggregation)(v, e)
    torch.testing.assert_close(
        SCAN(direction, aggregation, chunk_images=1, chunk_captions=1)(v, e), full
    )
    torch.testing.assert_close(
        full, naive_scan(v, e, direction, aggregation, scan.lambda_softmax, scan.lambda_lse)
    )


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_scan_float32_without_autograd_equals_the_naive_loop(direction):
    # float32 scoring without autograd (evaluation) runs the region-word products through
    # oneDNN (alignfuse._matmul); it must still equal the paper's equations
    from alignfuse._matmul import uses_onednn

    g = torch.Generator().manual_seed(1)
    v = torch.randn(5, 7, 16, generator=g)
    e = torch.randn(6, 4, 16, generator=g)
    vm = torch.ones(5, 7, dtype=torch.bool)
    vm[2, 4:] = False
    em = torch.ones(6, 4, dtype=torch.bool)
    em[0, 1:] = False
    scan = SCAN(direction, "lse", chunk_images=2, chunk_captions=4)
    l1, l2 = scan.lambda_softmax, scan.lambda_lse
    with torch.no_grad():
        if torch.backends.mkldnn.is_available():
            assert uses_onednn(v[0], e[0])
        got = scan(v, e, vm, em)
        full = scan(v, e)
    assert got.dtype == torch.float32
    ref = naive_scan(v.double(), e.double(), direction, "lse", l1, l2, vm, em)
    torch.testing.assert_close(got.double(), ref, atol=2e-6, rtol=0)
    ref = naive_scan(v.double(), e.double(), direction, "lse", l1, l2)
    torch.testing.assert_close(full.double(), ref, atol=2e-6, rtol=0)


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
@pytest.mark.parametrize("leaky", [0.0, 0.1])
def test_scan_workspace_route_equals_the_autograd_route(direction, leaky):
    # scoring without autograd writes the block intermediates into reused buffers; with the
    # authors' leaky clipping, padding on both sides and uneven last chunks it must give the
    # autograd route's scores
    g = torch.Generator().manual_seed(2)
    v = torch.randn(7, 5, 8, generator=g, dtype=torch.float64)
    e = torch.randn(9, 4, 8, generator=g, dtype=torch.float64)
    vm = torch.rand(7, 5, generator=g) > 0.3
    vm[:, 0] = True
    em = torch.rand(9, 4, generator=g) > 0.3
    em[:, 0] = True
    scan = SCAN(direction, "lse", leaky=leaky, chunk_images=3, chunk_captions=4)
    with torch.no_grad():
        fast = scan(v, e, vm, em)
    tracked = scan(v.clone().requires_grad_(True), e, vm, em)
    assert tracked.requires_grad
    torch.testing.assert_close(fast, tracked.detach(), atol=1e-12, rtol=0)


def test_scan_gradients_and_functional_form():
    v = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    e = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: SCAN("t2i", "lse")(a, b), (v, e))
    torch.testing.assert_close(scan_similarity(v, e, direction="i2t"), SCAN("i2t")(v, e))


@pytest.mark.parametrize("name", ["scan", "imram", "dime", "filip"])
def test_registry_contract(name):
    assert name in alignfuse.list_interactions()
    torch.manual_seed(0)
    m = alignfuse.create_interaction(name)
    v, e = torch.randn(3, 4, 64, requires_grad=True), torch.randn(5, 6, 64, requires_grad=True)
    em = torch.ones(5, 6, dtype=torch.bool)
    em[1, 3:] = False
    out = m(v, e, None, em)
    assert out.shape == (3, 5) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(e.grad).all()
    # padded words do not change the scores; chunking does not either
    e2 = e.detach().clone()
    e2[1, 3:] = 50.0
    with torch.no_grad():
        torch.testing.assert_close(m(v, e2, None, em), out, atol=1e-5, rtol=1e-5)
        if hasattr(m, "chunk_images"):
            m.chunk_images, m.chunk_captions = 2, 2
            torch.testing.assert_close(m(v, e, None, em), out, atol=1e-5, rtol=1e-5)
    assert m.double()(v.double(), e.double()).dtype == torch.float64


def test_imram_one_step_is_scan_average():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    e = torch.randn(4, 6, 8, generator=g, dtype=torch.float64)
    for direction in ("t2i", "i2t"):
        imram = IMRAM(dim=8, steps=1, direction=direction, lambda_softmax=7.0).double()
        scan = SCAN(direction, "avg", lambda_softmax=7.0)
        torch.testing.assert_close(imram(v, e), scan(v, e))
    both = IMRAM(dim=8, steps=1, direction="both", lambda_softmax=7.0).double()
    torch.testing.assert_close(
        both(v, e),
        SCAN("t2i", "avg", lambda_softmax=7.0)(v, e) + SCAN("i2t", "avg", lambda_softmax=7.0)(v, e),
    )


def test_imram_two_steps_equal_an_explicit_memory_update():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    e = torch.randn(3, 5, 6, generator=g, dtype=torch.float64)
    m = IMRAM(dim=6, steps=2, direction="t2i", lambda_softmax=5.0).double()
    ref = torch.zeros(2, 3, dtype=torch.float64)
    for a in range(2):
        for b in range(3):
            x = e[b]
            for k in range(2):
                s = (
                    torch.nn.functional.normalize(x, dim=-1)
                    @ torch.nn.functional.normalize(v[a], dim=-1).T
                )
                sp = s.clamp_min(0)
                sn = sp / (sp.pow(2).sum(0, keepdim=True).sqrt() + 1e-8)
                ctx = torch.softmax(5.0 * sn, dim=1) @ v[a]
                ref[a, b] += torch.nn.functional.cosine_similarity(x, ctx, dim=-1).mean()
                if k == 0:
                    xc = torch.cat((x, ctx), -1)
                    gate = torch.sigmoid(m.gate["t2i"](xc))
                    x = gate * x + (1 - gate) * torch.tanh(m.update["t2i"](xc))
    torch.testing.assert_close(m(v, e), ref)


def test_filip_scorer_is_mean_of_best_matches():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(2, 4, 5, generator=g, dtype=torch.float64)
    e = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    vn, en = torch.nn.functional.normalize(v, dim=-1), torch.nn.functional.normalize(e, dim=-1)
    i2t = torch.tensor(
        [[float((vn[a] @ en[b].T).max(1).values.mean()) for b in range(3)] for a in range(2)],
        dtype=torch.float64,
    )
    t2i = torch.tensor(
        [[float((vn[a] @ en[b].T).max(0).values.mean()) for b in range(3)] for a in range(2)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(LateInteraction("i2t")(v, e), i2t)
    torch.testing.assert_close(LateInteraction("t2i")(v, e), t2i)
    torch.testing.assert_close(LateInteraction("both")(v, e), (i2t + t2i) / 2)
    # float32 without autograd: the token products run through oneDNN (alignfuse._matmul)
    with torch.no_grad():
        got = LateInteraction("i2t")(v.float(), e.float())
    torch.testing.assert_close(got.double(), i2t, atol=1e-6, rtol=0)


def test_dime_routes_are_distributions_and_it_learns():
    torch.manual_seed(4)
    m = DIME(dim=16, layers=2, heads=2)
    v, e = torch.randn(4, 3, 16), torch.randn(4, 5, 16)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    target = torch.eye(4)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(m(v, e) * 10, torch.arange(4))
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]
    assert target.shape == (4, 4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: SCAN()(torch.randn(2, 3), torch.randn(2, 3, 4)), "regions must be"),
        (lambda: SCAN()(torch.randn(2, 3, 4), torch.randn(2, 3, 5)), "share the feature size"),
        (lambda: SCAN()(torch.randn(2, 0, 4), torch.randn(2, 3, 4)), "regions is empty"),
        (
            lambda: SCAN()(torch.randn(2, 3, 4), torch.full((2, 3, 4), float("nan"))),
            "words contains NaN",
        ),
        (
            lambda: SCAN()(
                torch.randn(2, 3, 4),
                torch.randn(2, 3, 4),
                None,
                torch.zeros(2, 3, dtype=torch.bool),
            ),
            "masks every token",
        ),
        (
            lambda: SCAN()(
                torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool)
            ),
            "mask of regions",
        ),
        (lambda: SCAN(direction="both"), "direction"),
        (lambda: SCAN(aggregation="max"), "aggregation"),
        (lambda: IMRAM(steps=0), "steps"),
        (lambda: IMRAM(direction="up"), "direction"),
        (lambda: DIME(dim=10, heads=4), "divisible"),
        (lambda: LateInteraction("sideways"), "direction"),
        (
            lambda: IMRAM(dim=4)(torch.randn(2, 3, 4), torch.randn(2, 3, 5)),
            "share the feature size",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
