"""Interaction scorers: SCAN against a naive loop written from the paper's equations, chunking,
masks, the registry contract and bad input."""

import pytest
import torch

import alignfuse
from alignfuse.interaction import SCAN, scan_similarity


def naive_scan(v, e, direction, aggregation, l1, l2, vm=None, em=None, eps=1e-8):
    """Every pair, every query token, explicit attended vectors (Lee et al. 2018, eqs. 1-4)."""
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
def test_scan_equals_the_naive_loop(direction, aggregation):
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    e = torch.randn(4, 6, 4, generator=g, dtype=torch.float64)
    vm = torch.ones(3, 5, dtype=torch.bool)
    vm[1, 3:] = False
    em = torch.ones(4, 6, dtype=torch.bool)
    em[2, 2:] = False
    scan = SCAN(direction, aggregation, chunk_images=2, chunk_captions=3)
    ref = naive_scan(v, e, direction, aggregation, scan.lambda_softmax, scan.lambda_lse, vm, em)
    torch.testing.assert_close(scan(v, e, vm, em), ref, atol=1e-12, rtol=0)
    # no masks: chunk sizes do not matter
    full = SCAN(direction, aggregation)(v, e)
    torch.testing.assert_close(
        SCAN(direction, aggregation, chunk_images=1, chunk_captions=1)(v, e), full
    )
    torch.testing.assert_close(
        full, naive_scan(v, e, direction, aggregation, scan.lambda_softmax, scan.lambda_lse)
    )


def test_scan_gradients_and_functional_form():
    v = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    e = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: SCAN("t2i", "lse")(a, b), (v, e))
    torch.testing.assert_close(scan_similarity(v, e, direction="i2t"), SCAN("i2t")(v, e))


def test_registry_contract():
    assert "scan" in alignfuse.list_interactions()
    for name in alignfuse.list_interactions():
        m = alignfuse.create_interaction(name)
        v, e = torch.randn(3, 4, 8), torch.randn(5, 6, 8)
        out = m(v, e)
        assert out.shape == (3, 5) and out.dtype == torch.float32 and torch.isfinite(out).all()
        assert m(v.double(), e.double()).dtype == torch.float64


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
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
