"""Fault injection: a run killed at random points, or stopped by a full disk, resumes to
bit-identical final weights."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alignfuse.engine import checkpoint as ckpt_module
from alignfuse.engine.checkpoint import latest_checkpoint
from alignfuse.errors import CheckpointError
from helpers import quiet_trainer


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(latest_checkpoint(run / "checkpoints") / "model.safetensors"))


def test_a_full_disk_stops_the_run_and_resume_is_identical(tmp_path, tiny_overrides, monkeypatch):
    overrides = [*tiny_overrides, "train.checkpoint_every=2"]
    whole = quiet_trainer(tmp_path, overrides, "whole")
    whole.fit()
    real = ckpt_module.save_file
    calls = {"n": 0}

    def full_disk(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # the third checkpoint's weights
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(ckpt_module, "save_file", full_disk)
    cut = quiet_trainer(tmp_path, overrides, "cut")
    with pytest.raises(
        CheckpointError,
        match=r"No space left on device; the last complete one "
        r"\(step-00000004\) is kept: make room",
    ):
        cut.fit()
    assert not [p for p in (tmp_path / "cut" / "checkpoints").iterdir() if p.name.startswith(".")]
    monkeypatch.setattr(ckpt_module, "save_file", real)  # space is free again
    again = quiet_trainer(tmp_path, overrides, "cut")
    again.fit(resume=True)
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def _train_cmd(cfg: Path, out: Path, resume: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "alignfuse.cli",
        "train",
        str(cfg),
        "--out",
        str(out),
        "--no-progress",
    ]
    return [*cmd, "--resume"] if resume else cmd


@pytest.mark.slow
def test_killed_at_random_points_resumes_bit_identically(tmp_path, tiny_overrides):
    import yaml

    from alignfuse.config import load_config, to_dict

    # 192 steps: room for a dozen kills however fast the steps (96 once allowed only 9)
    cfg = load_config(
        None, [*tiny_overrides, "train.epochs=16", "train.checkpoint_every=1", "name=killed"]
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    env = {**os.environ, "ALIGNFUSE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        _train_cmd(path, tmp_path / "whole", False),
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    rng = random.Random(0)
    run = tmp_path / "killed"
    kills, last_step, launches = 0, -1, 0
    while True:
        launches += 1
        proc = subprocess.Popen(
            _train_cmd(path, run, launches > 1),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if kills >= 12:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err.decode()[-2000:]
            break
        # wait for progress past the last kill, then kill at a random moment
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            latest = (
                latest_checkpoint(run / "checkpoints") if (run / "checkpoints").is_dir() else None
            )
            if latest is not None and int(latest.name.split("-")[1]) > last_step:
                break
            time.sleep(0.05)
        if proc.poll() is not None:  # finished before a kill: nothing left to interrupt
            assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            break
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        latest = latest_checkpoint(run / "checkpoints")
        last_step = int(latest.name.split("-")[1]) if latest is not None else last_step
    assert kills >= 10, f"only {kills} kills before the run finished"
    a, b = _final_weights(tmp_path / "whole"), _final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
