"""Data-parallel training (two gloo processes on the CPU) against one process: the same
full-batch gradient, ranks in lockstep, rank-0 checkpoints, and exact resume."""

import pytest
import torch

from alignfuse.config import load_config
from alignfuse.engine import Trainer, latest_checkpoint, load_data
from alignfuse.errors import ConfigError

# a tiny ViT (LayerNorm only: BatchNorm statistics would be per rank) and a BiGRU
DDP_OVERRIDES = [
    "model.image_encoder=vit",
    "model.args={image_args: {patch: 16, dim: 16, depth: 1, heads: 2, out_dim: 16}, "
    "text_args: {word_dim: 8, hidden: 8}}",
    "train.epochs=1",
    "train.max_steps=6",
]


def _cfg(tiny, name):
    return load_config(None, [*tiny, *DDP_OVERRIDES, f"name={name}"])


def _params(trainer):
    out = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"loss.{k}": v.detach().clone() for k, v in trainer.loss_fn.state_dict().items()})
    return out


class _FakeTrainer:
    """What ``Trainer._sum_gradients`` reads: parameters with rank-dependent gradients."""

    def __init__(self, rank, world):
        self.world = world
        self.named = {
            n: torch.nn.Parameter(torch.zeros(2)) for n in ("both", "rank1", "none", "temp")
        }
        self.named["both"].grad = torch.tensor([1.0, 2.0]) * (rank + 1)
        if rank == 1:
            self.named["rank1"].grad = torch.tensor([5.0, 7.0])
        self.named["temp"].grad = torch.tensor([3.0, 3.0])  # the full gradient on every rank
        self.loss_fn = torch.nn.ParameterList([self.named["temp"]])
        self.optimizer = torch.optim.SGD(list(self.named.values()), lr=0.1)

    def _trained(self):
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def _spawn(worker, tmp_path, tiny):
    """Run ``worker(rank, 2, init_file, root, tiny)`` in two gloo processes."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path), tiny), nprocs=2, join=True)


def _worker(rank, world, init_file, root, tiny):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = _cfg(tiny, "ddp")
        data = load_data(cfg)
        quiet = {"progress": False, "log": lambda m: None}
        # 1. one step's gradient
        a = Trainer(cfg, data, f"{root}/grad", **quiet)
        loss = a.train_step(0, 0, a.epoch_pairs(0))
        grads = {n: p.grad.clone() for n, p in a.model.named_parameters() if p.grad is not None}
        grads.update({f"loss.{n}": p.grad.clone() for n, p in a.loss_fn.named_parameters()})
        # gradients reached on some ranks only, or on none
        fake = _FakeTrainer(rank, world)
        Trainer._sum_gradients(fake)
        sums = {n: (None if p.grad is None else p.grad.tolist()) for n, p in fake.named.items()}
        # 2. an uninterrupted run, and 3. one stopped after 2 steps and resumed
        b = Trainer(cfg, data, f"{root}/full", **quiet)
        b.fit()
        c = Trainer(cfg, data, f"{root}/resumed", **quiet)
        c.fit(stop_after=2)
        c = Trainer(cfg, data, f"{root}/resumed", **quiet)
        c.fit(resume=True)
        torch.save(
            {"loss": loss, "grads": grads, "full": _params(b), "resumed": _params(c), "sums": sums},
            f"{root}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_like_one_on_the_same_global_batch(tmp_path, tiny_overrides):
    _spawn(_worker, tmp_path, tiny_overrides)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # the single-process step on the same global batch of 16
    cfg = _cfg(tiny_overrides, "single")
    one = Trainer(cfg, load_data(cfg), tmp_path / "single", progress=False, log=lambda m: None)
    loss = one.train_step(0, 0, one.epoch_pairs(0))
    want = {n: p.grad for n, p in one.model.named_parameters() if p.grad is not None}
    want.update({f"loss.{n}": p.grad for n, p in one.loss_fn.named_parameters()})
    assert "loss.logit_scale" in want  # the learnable temperature: averaged, not summed
    for res in ranks:
        assert res["loss"] == pytest.approx(loss, rel=1e-5)
        assert res["grads"].keys() == want.keys()
        for name, g in want.items():
            assert torch.allclose(res["grads"][name], g, rtol=1e-4, atol=1e-6), name
    for res in ranks:  # summed; one rank's alone; still None; averaged
        assert res["sums"] == {
            "both": [3.0, 6.0],
            "rank1": [5.0, 7.0],
            "none": None,
            "temp": [3.0, 3.0],
        }
    # the ranks stay in lockstep, and resuming replays the uninterrupted run exactly
    for key, value in ranks[0]["full"].items():
        assert torch.equal(value, ranks[1]["full"][key]), key
        for res in ranks:
            assert torch.equal(res["resumed"][key], value), key
    # rank 0 wrote the checkpoints, with both ranks' RNG states
    from alignfuse.engine import load_checkpoint

    _, opt, state = load_checkpoint(latest_checkpoint(tmp_path / "full" / "checkpoints"))
    assert state["step"] == 6 and "rng.torch" in opt and "rng.torch.rank1" in opt
    assert (tmp_path / "full" / "history.json").is_file()


def _bad_batch_worker(rank, world, init_file, root, tiny):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = load_config(None, [*tiny, *DDP_OVERRIDES, "train.batch_size=15"])
        with pytest.raises(ConfigError, match="multiple of the 2 processes"):
            Trainer(cfg, load_data(cfg), f"{root}/bad", progress=False)
        open(f"{root}/ok{rank}", "w").close()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_batch_that_does_not_split_evenly_is_a_config_error(tmp_path, tiny_overrides):
    _spawn(_bad_batch_worker, tmp_path, tiny_overrides)
    assert (tmp_path / "ok0").is_file() and (tmp_path / "ok1").is_file()


@pytest.mark.slow
def test_cli_train_under_torchrun(tmp_path):
    """``torchrun --standalone --nproc_per_node 2 -m alignfuse.cli train``: one report from
    rank 0, checkpoints with both ranks' RNG states, and ``--resume`` continues them."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from alignfuse.engine import load_checkpoint

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "name: tiny_ddp\n"
        "data: {name: shapes, args: {n_train: 96, n_val: 32, n_test: 32, n_winoground: 8}}\n"
        "model: {embed_dim: 16, args: {image_args: {width: 4, out_dim: 16}, "
        "text_args: {word_dim: 8, hidden: 8}}}\n"
        "train: {epochs: 1, batch_size: 16, captions_per_image: 2, checkpoint_every: 5}\n"
        "eval: {val_subset: 32}\n"
    )
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "ALIGNFUSE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "alignfuse.cli"]
    cmd += ["train", str(cfg)]
    opts = ["--out", str(tmp_path / "run"), "--no-progress"]
    done = subprocess.run([*cmd, *opts], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads(done.stdout)  # exactly one JSON report, from rank 0
    assert "test/rsum" in metrics and "test/modality_gap" in metrics
    _, opt, state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["step"] == 12 and "rng.torch.rank1" in opt
    again = subprocess.run(
        [*cmd, "train.epochs=2", *opts, "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    _, _, state = load_checkpoint(latest_checkpoint(tmp_path / "run" / "checkpoints"))
    assert state["step"] == 24
