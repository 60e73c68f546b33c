import json
import math
import re
from pathlib import Path

import pytest
import torch

from alignfuse.engine import latest_checkpoint, load_checkpoint
from alignfuse.engine.trainer import lr_factor
from alignfuse.errors import CheckpointError, TrainingDivergedError
from alignfuse.outputs import LossOutput
from helpers import quiet_trainer


def _trainer(tmp_path, overrides, name="run"):
    return quiet_trainer(tmp_path, overrides, name)


def test_training_reduces_loss_and_is_seeded(tmp_path, tiny_overrides):
    a = _trainer(tmp_path, [*tiny_overrides, "train.epochs=4"], "a")
    hist = a.fit()
    b = _trainer(tmp_path, [*tiny_overrides, "train.epochs=4"], "b")
    b.fit()
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    assert len(hist.val) == 4
    losses = [r["loss"] for r in a.history.train]
    assert losses[-1] < losses[0]
    assert (tmp_path / "a" / "config.yaml").is_file() and (tmp_path / "a" / "vocab.json").is_file()


@pytest.mark.parametrize("stop_after", [3, 6, 13])
def test_resume_reaches_the_same_final_state(tmp_path, tiny_overrides, stop_after):
    full = _trainer(tmp_path, tiny_overrides, "full")
    full.fit()
    part = _trainer(tmp_path, tiny_overrides, "part")
    part.fit(stop_after=stop_after)  # as if killed after a checkpoint
    assert part.step == stop_after
    resumed = _trainer(tmp_path, tiny_overrides, "part")
    resumed.fit(resume=True)
    assert resumed.step == full.step
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.history.val == full.history.val


def test_checkpoint_files_are_safetensors_and_json(tmp_path, tiny_overrides):
    tr = _trainer(tmp_path, tiny_overrides)
    tr.fit()
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "model.safetensors",
        "optim.safetensors",
        "state.json",
    ]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == tr.step
    # at most two checkpoints are kept
    assert len([p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.is_dir()]) <= 2


def test_corrupt_checkpoint_on_resume(tmp_path, tiny_overrides):
    tr = _trainer(tmp_path, tiny_overrides)
    tr.fit(stop_after=4)
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    data = bytearray((ckpt / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (ckpt / "model.safetensors").write_bytes(bytes(data))
    again = _trainer(tmp_path, tiny_overrides)
    with pytest.raises(CheckpointError, match="corrupt"):
        again.fit(resume=True)
    (ckpt / "state.json").write_text("{trunc")
    with pytest.raises(CheckpointError, match="no readable state.json"):
        load_checkpoint(ckpt)


def test_truncated_weights_are_reported(tmp_path, tiny_overrides):
    tr = _trainer(tmp_path, tiny_overrides)
    tr.fit(stop_after=2)
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    (ckpt / "optim.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing optim.safetensors"):
        load_checkpoint(ckpt)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_overrides, monkeypatch):
    tr = _trainer(tmp_path, [*tiny_overrides, "train.checkpoint_every=2"])
    real = tr.loss_fn.forward
    calls = {"n": 0}

    def flaky(a, b):
        calls["n"] += 1
        out = real(a, b)
        return LossOutput(out.loss * float("nan")) if calls["n"] == 5 else out

    monkeypatch.setattr(tr.loss_fn, "forward", flaky)
    with pytest.raises(TrainingDivergedError, match=r"loss is nan at step 4 .*step-00000004"):
        tr.fit()
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    tensors, _, state = load_checkpoint(ckpt)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point())


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert all(0 <= lr_factor(s, 100, 10) <= 1 for s in range(100))
    assert math.isclose(lr_factor(0, 10, 0), 1.0)


def test_epoch_pairs_visit_every_caption_once(tmp_path, tiny_overrides):
    tr = _trainer(tmp_path, [*tiny_overrides, "train.captions_per_image=5"])
    imgs, caps = tr.epoch_pairs(0)
    pairs = set(zip(imgs.tolist(), caps.tolist(), strict=True))
    assert len(pairs) == len(imgs) == 5 * len(tr.data["train"])
    assert not (tr.epoch_pairs(1)[0] == imgs).all()


def test_an_eval_split_the_data_lacks_is_named(tmp_path, tiny_overrides):
    from alignfuse.engine import evaluate
    from alignfuse.errors import ConfigError

    tr = _trainer(tmp_path, tiny_overrides)
    with pytest.raises(ConfigError, match=r"eval.splits names \['nope'\]"):
        evaluate(tr.model, tr.data, ["test", "nope"])


def test_nan_margins_are_refused():
    import torch

    from alignfuse.losses import triplet

    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match="margin must be > 0, got nan"):
        triplet(a, a, margin=float("nan"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=-1", "train.lr must be a positive finite number, got -1.0"),
        ("train.lr=.inf", "train.lr must be a positive finite number"),
        ("train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
        ("eval.batch_size=0", "eval.batch_size must be an integer >= 1, got 0"),
        ("train.warmup_fraction=1.5", r"train.warmup_fraction must be in \[0, 1\)"),
        ("train.schedule=linear", "train.schedule must be one of cosine, constant"),
        ("train.optimizer=sgd", "train.optimizer must be one of adamw, adam"),
        ("train.precision=fp8", "train.precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
        (
            "train.precision=fp16 train.grad_cache_chunk=8",
            "train.precision fp16 needs a gradient scaler",
        ),
    ],
)
def test_settings_no_run_can_use_are_named_before_training(
    tmp_path, tiny_overrides, override, message
):
    from alignfuse.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        _trainer(tmp_path, [*tiny_overrides, *override.split()])


def test_cuda_on_a_machine_without_it_is_named(monkeypatch):
    import torch

    from alignfuse.engine.fit import resolve_device
    from alignfuse.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device 'cuda': this machine has no CUDA"):
        resolve_device("cuda")


def test_a_run_folder_is_locked_and_keeps_its_config(tmp_path, tiny_overrides):
    import os

    from alignfuse.engine.fit import run_lock
    from alignfuse.errors import ConfigError

    (tmp_path / "run").mkdir()
    held = run_lock(tmp_path / "run")  # as another process training there would
    with pytest.raises(ConfigError, match=f"in use by process {os.getpid()}"):
        _trainer(tmp_path, tiny_overrides).fit()
    held.close()
    _trainer(tmp_path, tiny_overrides).fit(stop_after=2)
    other = _trainer(tmp_path, [*tiny_overrides, "train.lr=0.01", "train.seed=3"])
    with pytest.raises(ConfigError, match=r"another config \(it differs in train.lr, train.seed\)"):
        other.fit(resume=True)
    _trainer(tmp_path, tiny_overrides).fit(resume=True)  # the same config resumes


def test_model_init_starts_from_another_run(tmp_path, tiny_overrides):
    from safetensors.torch import save_file

    from alignfuse.errors import CheckpointError

    first = _trainer(tmp_path, tiny_overrides, "first")
    first.fit()
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = _trainer(tmp_path, [*tiny_overrides, f"model.init={tmp_path / 'first'}"], "second")
    for k, v in second.model.state_dict().items():
        assert torch.equal(v, trained[k]), k
    # a state dict file works the same; names and shapes must fit
    save_file({k: v.contiguous() for k, v in trained.items()}, tmp_path / "w.safetensors")
    third = _trainer(tmp_path, [*tiny_overrides, f"model.init={tmp_path / 'w.safetensors'}"], "t")
    assert torch.equal(next(iter(third.model.state_dict().values())), next(iter(trained.values())))
    with pytest.raises(CheckpointError, match="does not fit the model: .*other shape"):
        _trainer(
            tmp_path,
            [*tiny_overrides, "model.embed_dim=8", f"model.init={tmp_path / 'first'}"],
            "bad",
        )
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        _trainer(tmp_path, [*tiny_overrides, f"model.init={tmp_path}"], "none")
    with pytest.raises(CheckpointError, match="does not exist"):
        _trainer(tmp_path, [*tiny_overrides, f"model.init={tmp_path / 'nope.pt'}"], "nope")


def test_resume_falls_back_to_the_newest_valid_checkpoint(tmp_path, tiny_overrides):
    overrides = [*tiny_overrides, "train.checkpoint_every=2"]
    _trainer(tmp_path, overrides).fit(stop_after=5)  # checkpoints at steps 4 and 5
    folder = tmp_path / "run" / "checkpoints"
    newest = latest_checkpoint(folder)
    assert newest.name == "step-00000005"
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(data))
    logs: list[str] = []
    again = quiet_trainer(tmp_path, overrides, "run")
    again.log = logs.append
    assert again.resume() and again.step == 4
    assert any("skipped step-00000005" in m and "resuming from step-00000004" in m for m in logs)
    # following the error's advice (delete the corrupt folder) resumes too: the dangling
    # pointer is skipped
    import shutil

    shutil.rmtree(newest)
    third = quiet_trainer(tmp_path, overrides, "run")
    assert third.resume() and third.step == 4


def test_without_a_terminal_training_prints_plain_progress_lines(
    tmp_path, tiny_overrides, monkeypatch
):
    import alignfuse.engine.fit as fit_module

    monkeypatch.setattr(fit_module, "PLAIN_EVERY", 0.0)
    lines: list[str] = []
    tr = quiet_trainer(tmp_path, tiny_overrides, "plain")
    tr.log = lines.append
    tr.fit()
    plain = [m for m in lines if "rows/s" in m]
    assert plain and all(re.search(r"epoch \d+ step \d+/\d+ loss \d+\.\d+", m) for m in plain)


# ------------------------------------------------------------------ mixed precision


def test_full_precision_loss_gets_float32_inputs_under_autocast():
    from alignfuse.engine.fit import full_precision_loss

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, extra):
            seen.append((x.dtype, extra["y"].dtype, torch.is_autocast_enabled("cpu")))
            return (x @ extra["y"].T).logsumexp(1).mean()

    loss = Spy()
    full_precision_loss(loss)
    full_precision_loss(loss)  # once is enough; twice changes nothing
    lin = torch.nn.Linear(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(torch.randn(3, 4))
        assert h.dtype == torch.bfloat16
        out = loss(h, {"y": h})
    assert seen == [(torch.float32, torch.float32, False)]
    assert out.dtype == torch.float32
    out.backward()
    assert lin.weight.grad is not None and lin.weight.grad.dtype == torch.float32
    assert not loss.state_dict()  # no wrapper module in the state dict


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads the Linux CPU flags")
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_instructions(
    tmp_path, tiny_overrides, monkeypatch
):
    from alignfuse.engine.fit import native_bf16, resolve_precision

    cpu = torch.device("cpu")
    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert native_bf16(cpu) == native
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    for fixed in ("fp32", "bf16", "fp16"):
        assert resolve_precision(fixed, cpu) == fixed
    # the trainer uses the resolved precision: autocast in bf16, or none
    for has, want, dtype in ((True, "bf16", torch.bfloat16), (False, "fp32", None)):
        monkeypatch.setattr("alignfuse.engine.fit.native_bf16", lambda d, has=has: has)
        trainer = _trainer(tmp_path, [*tiny_overrides, "train.precision=auto"], want)
        assert (trainer.precision, trainer.autocast_dtype, trainer.scaler) == (want, dtype, None)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_exactly(tmp_path, tiny_overrides, precision):
    over = [*tiny_overrides, f"train.precision={precision}"]
    if precision == "fp16":  # emulated on CPUs: said once, at the start
        with pytest.warns(UserWarning, match="fp16 on the CPU"):
            _trainer(tmp_path, over, "warned")
    full = _trainer(tmp_path, over, "full")
    full.fit()
    assert all(p.dtype == torch.float32 for p in full.model.parameters())
    losses = [r["loss"] for r in full.history.train]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert (full.scaler is not None) == (precision == "fp16")
    # not the float32 run: the forward really ran in lower precision
    fp32 = _trainer(tmp_path, tiny_overrides, "fp32")
    fp32.fit()
    assert fp32.history.train != full.history.train
    # a resumed run (the gradient scaler's state included) ends where the full one did
    part = _trainer(tmp_path, over, "part")
    part.fit(stop_after=5)
    resumed = _trainer(tmp_path, over, "part")
    resumed.fit(resume=True)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    if precision == "fp16":
        assert resumed.scaler.state_dict() == full.scaler.state_dict()
