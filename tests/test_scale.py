"""GradCache and cross-process gathering reproduce the full single-process batch exactly."""

import json
import os

import numpy as np
import pytest
import torch

import alignfuse
from alignfuse.encoders import Tokenizer
from alignfuse.engine.grad_cache import grad_cache_step
from alignfuse.models import build_dual_encoder


def _model_and_batch(n=10):
    torch.manual_seed(0)
    texts = [
        f"a {c} {s} above a {c2} square"
        for c, s, c2 in zip(
            ["red", "blue", "green", "white", "cyan"] * 2,
            ["circle", "star"] * 5,
            ["blue", "red"] * 5,
            strict=True,
        )
    ][:n]
    tok = Tokenizer.build(texts)
    model = build_dual_encoder(
        tok,
        embed_dim=8,
        image_encoder="vit",
        text_encoder="transformer",
        image_args={"image_size": 16, "patch": 4, "dim": 16, "depth": 1, "heads": 2, "out_dim": 16},
        text_args={"dim": 16, "depth": 1, "heads": 2},
    ).double()
    images = torch.randn(n, 3, 16, 16, dtype=torch.float64)
    return model, images, model.prepare_text(texts)


def _grads(model, loss_fn):
    params = [*model.parameters(), *loss_fn.parameters()]
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


@pytest.mark.parametrize("loss_name", ["info_nce", "sigmoid", "triplet"])
@pytest.mark.parametrize("chunk", [1, 3, 10])
def test_grad_cache_equals_full_batch(loss_name, chunk):
    model, images, text = _model_and_batch()
    loss_fn = alignfuse.create_loss(loss_name).double()
    model.zero_grad()
    a, b = model(images, text)
    full = loss_fn(a, b).loss
    full.backward()
    want = _grads(model, loss_fn)
    model.zero_grad()
    loss_fn.zero_grad()
    out = grad_cache_step(model, loss_fn, images, text, chunk)
    got = _grads(model, loss_fn)
    assert torch.allclose(out.loss, full.detach())
    for w, g in zip(want, got, strict=True):
        assert torch.allclose(w, g, rtol=1e-9, atol=1e-12)


def test_trainer_with_grad_cache_runs(tmp_path, tiny_overrides):
    from alignfuse.config import load_config
    from alignfuse.engine import Trainer, load_data

    cfg = load_config(None, [*tiny_overrides, "train.grad_cache_chunk=4", "train.epochs=1"])
    tr = Trainer(cfg, load_data(cfg), tmp_path / "gc", progress=False, log=lambda m: None)
    tr.fit()
    assert tr.step == tr.total_steps and tr.history.val


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from alignfuse.distributed import all_gather_with_grad, world_size
    from alignfuse.losses import info_nce, sigmoid_loss

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        a_all = torch.randn(8, 5, generator=g, dtype=torch.float64)
        b_all = torch.randn(8, 5, generator=g, dtype=torch.float64)
        n = 8 // world
        result = {}
        for name, fn in (
            ("info_nce", lambda x, y: info_nce(x, y, 1.5)),
            ("sigmoid", lambda x, y: sigmoid_loss(x, y, 1.0, -2.0)),
        ):
            a = a_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
            b = b_all[rank * n : (rank + 1) * n].clone().requires_grad_(True)
            loss = fn(all_gather_with_grad(a), all_gather_with_grad(b))
            loss.backward()
            result[name] = {
                "loss": float(loss.detach()),
                "ga": a.grad.tolist(),
                "gb": b.grad.tolist(),
                "world": world_size(),
            }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gather_equals_single_process(tmp_path):
    import torch.multiprocessing as mp

    from alignfuse.losses import info_nce, sigmoid_loss

    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(8, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    b = torch.randn(8, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name, fn in (
        ("info_nce", lambda x, y: info_nce(x, y, 1.5)),
        ("sigmoid", lambda x, y: sigmoid_loss(x, y, 1.0, -2.0)),
    ):
        a.grad = b.grad = None
        loss = fn(a, b)
        loss.backward()
        for r, res in enumerate(ranks):
            assert res[name]["world"] == 2
            assert res[name]["loss"] == pytest.approx(float(loss.detach()), rel=1e-12)
            assert np.allclose(res[name]["ga"], a.grad[r * 4 : (r + 1) * 4].numpy(), rtol=1e-10)
            assert np.allclose(res[name]["gb"], b.grad[r * 4 : (r + 1) * 4].numpy(), rtol=1e-10)
