"""Fusion family: a registry-wide contract, the reference checks of the papers, bad input."""

import numpy as np
import pytest
import torch

import alignfuse
from alignfuse.fusion import BottleneckFusion, LowRankFusion, TensorFusion, pool, product_of_experts
from alignfuse.registry import FUSION

TWO_ONLY = {"co_attention", "gated", "film", "san"}
SMALL = {"width": 16, "heads": 2}
ARGS = {
    "early": {"hidden": 16},
    "late": {"hidden": 16},
    "hybrid": {"hidden": 16},
    "tensor": {"hidden": 4},
    "low_rank": {"hidden": 4, "rank": 3},
    "kernel": {"n_anchors": 8, "hidden": 8},
    "graph": {"hidden": 16},
    "mvae": {"hidden": 16},
    "co_attention": {**SMALL, "layers": 1},
    "single_stream": {**SMALL, "layers": 1},
    "gated": SMALL,
    "multiway": {**SMALL, "layers": 1},
    "bottleneck": {**SMALL, "layers": 2, "fusion_layer": 1},
    "qformer": {**SMALL, "layers": 1, "n_queries": 3},
    "film": {"width": 16},
    "san": {"width": 16},
}
DIMS = {"image": 12, "text": 10}


def _inputs(dtype=torch.float32, b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(b, 5, 12, generator=g, dtype=dtype)
    text = torch.randn(b, 4, 10, generator=g, dtype=dtype)
    masks = {"image": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]).bool()[:b]}
    return {"image": image, "text": text}, masks


def test_every_fusion_is_covered_here():
    assert set(alignfuse.list_fusion()) == set(ARGS)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_contract(name):
    torch.manual_seed(0)
    f = alignfuse.create_fusion(name, dims=DIMS, out_dim=7, **ARGS[name]).double()
    x, masks = _inputs(torch.float64)
    out = f(x, masks)
    assert out.shape == (3, 7) and out.dtype == torch.float64 and out.device == x["image"].device
    assert torch.isfinite(out).all()
    # the order of the mapping does not matter
    torch.testing.assert_close(f({"text": x["text"], "image": x["image"]}, masks), out)
    # finite gradients reach the inputs and the parameters
    xi = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    f(xi, masks).square().sum().backward()
    assert all(torch.isfinite(v.grad).all() for v in xi.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in f.parameters())
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in f.parameters())
    # vectors are accepted as well as sequences
    assert f({"image": x["image"][:, 0], "text": x["text"][:, 0]}).shape == (3, 7)
    # padded tokens do not change the output
    x2 = {k: v.clone() for k, v in x.items()}
    x2["image"][2, 1:] = 100.0
    torch.testing.assert_close(f(x2, masks), out)


@pytest.mark.parametrize("name", sorted(set(ARGS) - TWO_ONLY))
def test_three_modalities(name):
    f = alignfuse.create_fusion(name, dims={**DIMS, "audio": 6}, out_dim=5, **ARGS[name])
    x, _ = _inputs()
    x["audio"] = torch.randn(3, 6)
    assert f(x).shape == (3, 5)


@pytest.mark.parametrize("name", sorted(ARGS))
def test_bad_input(name):
    f = alignfuse.create_fusion(name, dims=DIMS, out_dim=7, **ARGS[name])
    x, _ = _inputs()
    if f.requires_all:
        with pytest.raises(ValueError, match="needs modality 'text'"):
            f({"image": x["image"]})
    else:  # documented: the present modalities answer alone
        assert f({"image": x["image"]}).shape == (3, 7)
    with pytest.raises(ValueError, match="batch size"):
        f({"image": x["image"], "text": x["text"][:2]})
    with pytest.raises(ValueError, match="must have 10 features"):
        f({"image": x["image"], "text": torch.randn(3, 4, 9)})
    with pytest.raises(ValueError, match="is empty"):
        f({"image": x["image"][:, :0], "text": x["text"]})
    with pytest.raises(ValueError, match="masks every token"):
        f(x, {"image": torch.zeros(3, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        f({**x, "audio": torch.randn(3, 2)})
    with pytest.raises(ValueError, match="NaN"):
        f({"image": x["image"], "text": torch.full((3, 10), float("nan"))})


def test_constructor_checks():
    with pytest.raises(ValueError, match="dims"):
        alignfuse.create_fusion("early", dims={}, out_dim=3)
    with pytest.raises(ValueError, match="out_dim"):
        alignfuse.create_fusion("early", dims=DIMS, out_dim=0)
    with pytest.raises(ValueError, match="exactly two"):
        alignfuse.create_fusion("co_attention", dims={**DIMS, "audio": 3}, out_dim=3)
    with pytest.raises(ValueError, match="multiple of heads"):
        alignfuse.create_fusion("single_stream", dims=DIMS, out_dim=3, width=10, heads=4)
    with pytest.raises(ValueError, match="fusion_layer"):
        alignfuse.create_fusion("bottleneck", dims=DIMS, out_dim=3, layers=2, fusion_layer=3)


def test_tensor_fusion_is_the_outer_product_with_appended_ones():
    torch.manual_seed(1)
    f = TensorFusion({"a": 5, "b": 4, "c": 3}, out_dim=2, hidden=3).double()
    x = {
        "a": torch.randn(4, 5, dtype=torch.float64),
        "b": torch.randn(4, 4, dtype=torch.float64),
        "c": torch.randn(4, 3, dtype=torch.float64),
    }
    z = f.fused_tensor(x)
    for n in range(4):
        ha, hb, hc = (
            torch.cat((f.proj[m](x[m][n]), torch.ones(1, dtype=torch.float64))) for m in "abc"
        )
        explicit = torch.einsum("i,j,k->ijk", ha, hb, hc).flatten()
        torch.testing.assert_close(z[n], explicit)
        # the appended 1 keeps the unimodal terms: the corner entries are the projections
        assert float(z[n, -1].detach()) == 1.0


def test_low_rank_with_full_rank_reproduces_a_tensor_fusion_weight():
    torch.manual_seed(2)
    h, out = 3, 4
    tfn = TensorFusion({"a": 6, "b": 5}, out_dim=out, hidden=h).double()
    lmf = LowRankFusion({"a": 6, "b": 5}, out_dim=out, hidden=h, rank=h + 1).double()
    lmf.proj.load_state_dict(tfn.proj.state_dict())
    w = tfn.out.weight.detach().view(out, h + 1, h + 1)  # W_o[i, j] for z = h_a (x) h_b
    fa = torch.zeros(h + 1, h + 1, out, dtype=torch.float64)
    fb = torch.zeros(h + 1, h + 1, out, dtype=torch.float64)
    for o in range(out):
        u, s, vt = torch.linalg.svd(w[o])
        fa[:, :, o] = (u * s).T  # factor r: s_r u_r
        fb[:, :, o] = vt  # factor r: v_r
    with torch.no_grad():
        lmf.factors["a"].copy_(fa)
        lmf.factors["b"].copy_(fb)
        lmf.bias.copy_(tfn.out.bias)
    x = {"a": torch.randn(5, 6, dtype=torch.float64), "b": torch.randn(5, 5, dtype=torch.float64)}
    torch.testing.assert_close(lmf(x), tfn(x))


def test_bottleneck_without_fusion_layers_is_separate_streams():
    torch.manual_seed(3)
    f = (
        BottleneckFusion(DIMS, out_dim=4, width=16, heads=2, layers=2, fusion_layer=2)
        .double()
        .eval()
    )
    x, masks = _inputs(torch.float64)
    pooled = []
    for m in f.modalities:
        h = f.proj[m](x[m])
        mask = masks.get(m, torch.ones(h.shape[:2], dtype=torch.bool))
        for layer in f.streams[m]:
            h = layer(h, src_key_padding_mask=~mask)
        pooled.append(pool(h, mask))
    torch.testing.assert_close(f(x, masks), f.out(torch.stack(pooled).mean(0)))
    # and changing one modality changes nothing in the other stream's contribution
    g = (
        BottleneckFusion(DIMS, out_dim=4, width=16, heads=2, layers=2, fusion_layer=0)
        .double()
        .eval()
    )
    assert g(x, masks).shape == (3, 4)


def test_qformer_output_size_does_not_depend_on_input_length():
    f = alignfuse.create_fusion(
        "qformer", dims={"image": 12}, out_dim=5, width=16, heads=2, n_queries=6
    )
    for length in (1, 7, 50):
        q = f.query_outputs({"image": torch.randn(2, length, 12)})
        assert q.shape == (2, 6, 16)
        assert f({"image": torch.randn(2, length, 12)}).shape == (2, 5)


def test_product_of_experts_matches_the_closed_form_and_a_grid():
    mus = [torch.tensor([[0.5, -1.0]]), torch.tensor([[2.0, 0.3]])]
    logvars = [torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0, 0.5]])]
    mean, logvar = product_of_experts(mus, logvars)
    for d in range(2):
        prec = 1.0 + sum(float(torch.exp(-lv[0, d])) for lv in logvars)
        mu = (
            sum(float(m[0, d] * torch.exp(-lv[0, d])) for m, lv in zip(mus, logvars, strict=True))
            / prec
        )
        assert float(mean[0, d]) == pytest.approx(mu)
        assert float(logvar[0, d]) == pytest.approx(-np.log(prec))
        # the normalised product of the three densities on a fine grid has that mean and variance
        z = np.linspace(-10, 10, 200001)
        dens = np.exp(-0.5 * z**2)
        for m, lv in zip(mus, logvars, strict=True):
            dens *= np.exp(-0.5 * (z - float(m[0, d])) ** 2 / np.exp(float(lv[0, d])))
        dens /= dens.sum()
        assert (dens * z).sum() == pytest.approx(mu, abs=1e-6)
        assert (dens * (z - mu) ** 2).sum() == pytest.approx(1 / prec, abs=1e-6)


def test_mvae_handles_a_missing_modality_and_trains():
    torch.manual_seed(4)
    f = alignfuse.create_fusion("mvae", dims=DIMS, out_dim=3, hidden=16)
    x, _ = _inputs()
    xv = {k: pool(v) for k, v in x.items()}
    mu_img = f({"image": xv["image"]})
    mu_all = f(xv)
    assert mu_img.shape == mu_all.shape == (3, 3) and not torch.allclose(mu_img, mu_all)
    opt = torch.optim.Adam(f.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = f.loss(xv)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(f.loss(xv).detach()) < first


def test_late_fusion_renormalises_weights_over_present_modalities():
    f = alignfuse.create_fusion(
        "late",
        dims=DIMS,
        out_dim=2,
        hidden=8,
        weights={"image": 3.0, "text": 1.0},
        learn_weights=False,
    )
    x, _ = _inputs()
    xv = {k: pool(v) for k, v in x.items()}
    both = f(xv)
    hi, ht = f.heads["image"](xv["image"]), f.heads["text"](xv["text"])
    torch.testing.assert_close(both, 0.75 * hi + 0.25 * ht)
    torch.testing.assert_close(f({"image": xv["image"]}), hi)


def test_kernel_weights_are_a_distribution():
    f = alignfuse.create_fusion("kernel", dims=DIMS, out_dim=2)
    w = f.kernel_weights()
    assert set(w) == set(DIMS) and sum(w.values()) == pytest.approx(1.0)


def test_san_exposes_its_attention_maps():
    f = alignfuse.create_fusion("san", dims=DIMS, out_dim=4, width=16, query="text")
    x, masks = _inputs()
    f(x, masks)
    att = f.last_attention
    assert att.shape == (3, 2, 5)
    torch.testing.assert_close(att.sum(-1), torch.ones(3, 2))
    assert float(att[2, :, 1:].abs().sum()) == 0.0  # padded regions get no attention


def test_registry_family_lists_every_module_with_a_summary():
    for entry in FUSION.entries():
        assert entry.summary


def _attention(m, q, k, v, key_pad=None):
    """Multi-head scaled dot-product attention written out from the module's weights."""
    d, h = m.embed_dim, m.num_heads
    w, b = m.in_proj_weight, m.in_proj_bias
    qs, ks, vs = (
        x @ w[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i, x in enumerate((q, k, v))
    )
    split = lambda x: x.reshape(x.shape[0], x.shape[1], h, d // h).transpose(1, 2)  # noqa: E731
    scores = split(qs) @ split(ks).transpose(-1, -2) / (d // h) ** 0.5
    if key_pad is not None:
        scores = scores.masked_fill(key_pad[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ split(vs)).transpose(1, 2).reshape(q.shape[0], q.shape[1], d)
    return m.out_proj(out)


def test_qformer_fusion_is_blip2s_prenorm_layers_written_out():
    """The qformer fusion against the pre-norm Q-Former equations: queries self-attend,
    cross-attend the projected tokens of every modality (padding masked), feed-forward, each
    on the LayerNorm of its input with a residual; a final LayerNorm, the mean query, out."""
    torch.manual_seed(0)
    f = alignfuse.create_fusion("qformer", dims=DIMS, out_dim=7, width=16, heads=4, layers=2)
    f = f.double().eval()
    x, masks = _inputs(torch.float64)
    kv = torch.cat([f.proj[m](x[m]) for m in f.modalities], 1)
    full = {m: masks.get(m, torch.ones(x[m].shape[:2], dtype=torch.bool)) for m in f.modalities}
    pad = ~torch.cat([full[m] for m in f.modalities], 1)
    q = f.queries.expand(len(kv), -1, -1)
    for layer in f.layers:
        h = layer.norm_self(q)
        q = q + _attention(layer.self_attn, h, h, h)
        h = layer.norm_cross(q)
        q = q + _attention(layer.cross_attn, h, kv, kv, pad)
        q = q + layer.ffn_query(q)
    want = f.out(f.norm(q).mean(1))
    with torch.no_grad():
        torch.testing.assert_close(f(x, masks), want, rtol=1e-10, atol=1e-12)
