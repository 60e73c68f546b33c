"""The one training loop: every trainable experiment of alignfuse runs through :class:`Fit`.

A :class:`~alignfuse.tasks.base.Task` says what to build, which batches an epoch visits
and what one step's loss is; this loop does the rest, the same for every task:

- seeding (``train.seed``) before the model is built;
- AdamW with linear warm-up then cosine decay (``train.schedule: cosine``) or a constant
  learning rate (``constant``), gradient clipping (``train.grad_clip``, 0 for none);
- data parallelism under ``torchrun``: every rank takes its slice of each global batch,
  the task gathers what its loss couples across the batch, and the gradients are summed
  over ranks in one flat all-reduce before clipping and the step, so each step equals the
  single-process step on the same global batch. Rank 0 alone validates, logs, shows
  progress and writes checkpoints; every rank's RNG state is saved;
- a NaN guard that stops at the first non-finite loss, naming the last good checkpoint;
- atomic checkpoints (safetensors + JSON) every ``train.checkpoint_every`` steps and at
  every epoch's end, and exact resume: a resumed run replays the steps an uninterrupted
  one would, to bit-identical weights;
- progress bars on a terminal and one line per epoch, validation every
  ``train.eval_every`` epochs, and the history (windowed training loss, each epoch's mean
  loss, validation rows) saved with every checkpoint and as ``history.json``.

Example (the built-in image-text task on tiny data):
    >>> from alignfuse.config import load_config
    >>> from alignfuse.engine.fit import Fit
    >>> from alignfuse.tasks import create_task
    >>> import tempfile
    >>> cfg = load_config(None, ["data.args={n_train: 64, n_val: 16, n_test: 16, "
    ...     "n_winoground: 4, use_cache: false}", "train.epochs=1", "train.batch_size=16",
    ...     "train.captions_per_image=1", "model.embed_dim=8",
    ...     "model.args={image_args: {width: 4, out_dim: 8}, text_args: {word_dim: 4, hidden: 4}}"])
    >>> run = tempfile.mkdtemp()
    >>> fit = Fit(create_task(cfg, run_dir=run), run, progress=False, log=lambda m: None)
    >>> history = fit.fit()
    >>> fit.step, len(history.epochs)
    (4, 1)
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from alignfuse._progress import PLAIN_EVERY
from alignfuse.config import ExperimentConfig
from alignfuse.engine.checkpoint import (
    flatten_optimizer,
    latest_checkpoint,
    newest_valid_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
)
from alignfuse.errors import CheckpointError, ConfigError, TrainingDivergedError
from alignfuse.outputs import LossOutput
from alignfuse.tasks.base import EstimatorTask, Task, TaskDefaults

SCHEDULES = ("cosine", "constant")
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device {name!r} is not a device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device {name!r}: this machine has no CUDA device (use auto or cpu)"
        )
    return device


def check_settings(cfg: ExperimentConfig) -> None:
    """Reject training and evaluation settings no run can use, naming the key."""
    t = cfg.train
    checks: list[tuple[str, object, bool, str]] = [
        ("train.epochs", t.epochs, t.epochs >= 1, "an integer >= 1"),
        ("train.batch_size", t.batch_size, t.batch_size >= 1, "an integer >= 1"),
        ("train.lr", t.lr, t.lr > 0 and math.isfinite(t.lr), "a positive finite number"),
        ("train.weight_decay", t.weight_decay, t.weight_decay >= 0, "a number >= 0"),
        ("train.warmup_fraction", t.warmup_fraction, 0 <= t.warmup_fraction < 1, "in [0, 1)"),
        ("train.grad_clip", t.grad_clip, t.grad_clip >= 0, "a number >= 0 (0: no clipping)"),
        ("train.eval_every", t.eval_every, t.eval_every >= 0, "an integer >= 0 (0: never)"),
        ("train.checkpoint_every", t.checkpoint_every, t.checkpoint_every >= 0, "an integer >= 0"),
        ("eval.batch_size", cfg.eval.batch_size, cfg.eval.batch_size >= 1, "an integer >= 1"),
    ]
    if t.max_steps is not None:
        checks.append(("train.max_steps", t.max_steps, t.max_steps >= 1, "an integer >= 1"))
    checks.append(
        (
            "train.precision",
            t.precision,
            t.precision in PRECISIONS or t.precision == "auto",
            f"one of auto, {', '.join(PRECISIONS)}",
        )
    )
    if t.precision == "fp16" and t.grad_cache_chunk:
        raise ConfigError(
            "train.precision fp16 needs a gradient scaler, which train.grad_cache_chunk "
            "(a step that back-propagates itself) does not use: choose bf16 or fp32"
        )
    for key, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{key} must be {expected}, got {value!r}")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA device that supports it, or a
    CPU with AVX-512 BF16 or AMX instructions (elsewhere PyTorch emulates bfloat16, slower
    than float32)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run trains in: ``auto`` is ``bf16`` where ``device`` has native
    bfloat16 arithmetic (:func:`native_bf16`) and ``fp32`` elsewhere; any other value is
    itself."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def full_precision_loss(loss_fn: torch.nn.Module) -> None:
    """Make ``loss_fn`` compute in float32 under autocast: its floating-point tensor inputs
    (nested in lists, tuples and dicts too) are cast up and autocast is off inside, so its
    log-sum-exps, temperatures and margins keep float32 numerics (the state dict is
    unchanged)."""
    if getattr(loss_fn, "_full_precision", False):
        return
    inner = loss_fn.forward

    def up(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16):
            return x.float()
        if isinstance(x, (list, tuple)):
            return type(x)(up(v) for v in x)
        if isinstance(x, dict):
            return {k: up(v) for k, v in x.items()}
        return x

    def forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(_device_type(args, kwargs), enabled=False):
            return inner(*up(args), **up(kwargs))

    loss_fn.forward = forward  # type: ignore[method-assign]
    loss_fn._full_precision = True  # type: ignore[assignment]


def _device_type(args: Any, kwargs: Any) -> str:
    for x in [*args, *kwargs.values()]:
        if isinstance(x, torch.Tensor):
            return x.device.type
    return "cpu"


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy's legacy global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class History:
    """What a run records: the windowed training loss (and the parts a composite objective
    logs), each epoch's mean training loss, and validation metrics."""

    train: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    epochs: list[float] = field(default_factory=list)


class Fit:
    """Train the model of ``task`` in ``run_dir`` (the one training loop of alignfuse).

    Args:
        task: the experiment's task (it holds the resolved config as ``task.cfg``).
        run_dir: where checkpoints, the config and the history go (``None``: nowhere; the
            run cannot be resumed).
        progress: show progress bars (default: when stderr is a terminal).
        log: where to print one line per epoch (default: stderr).
        seed: seed torch with ``train.seed`` before ``task.build()`` (``False`` for a task
            that hands over a model built and seeded by its caller).
    """

    def __init__(
        self,
        task: Task | EstimatorTask,
        run_dir: str | Path | None,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
        seed: bool = True,
    ) -> None:
        from alignfuse.tasks import looped

        self.task = task = looped(task)
        self.cfg = cfg = task.cfg
        self.run_dir = Path(run_dir) if run_dir is not None else None
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world = dist.get_world_size() if distributed else 1
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.progress = self.progress and self.rank == 0
        say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.log = say if self.rank == 0 else (lambda msg: None)
        check_settings(cfg)
        self.device = resolve_device(cfg.train.device)
        if cfg.train.schedule not in SCHEDULES:
            raise ConfigError(
                f"train.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.train.schedule!r}"
            )
        if cfg.train.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.train.optimizer!r}"
            )
        if seed:
            torch.manual_seed(cfg.train.seed)
        model, loss_fn = task.build()
        init = getattr(getattr(cfg, "model", None), "init", None)
        if init:
            from alignfuse.engine.checkpoint import apply_initial_state

            apply_initial_state(model, init)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn.to(self.device)
        params = [
            p for p in [*self.model.parameters(), *self.loss_fn.parameters()] if p.requires_grad
        ]
        # a model with nothing to train (a lexical linker) is evaluated as built
        self.trainable = any(p.requires_grad for p in self.model.parameters())
        if not self.trainable:
            params = [torch.nn.Parameter(torch.zeros(()))]  # an optimiser needs one
        self.optimizer = OPTIMIZERS[cfg.train.optimizer](
            params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.autocast_dtype = PRECISIONS[self.precision]
        self.scaler = (
            torch.amp.GradScaler(self.device.type)  # type: ignore[attr-defined]
            if self.precision == "fp16"
            else None
        )
        if self.autocast_dtype is not None:
            full_precision_loss(self.loss_fn)
        if self.precision == "fp16" and self.device.type == "cpu":
            warnings.warn(
                "train.precision fp16 on the CPU: most CPUs have no float16 arithmetic, so it "
                "is emulated (13x slower than fp32 on the AMD EPYC of BENCHMARKS.md); use bf16",
                stacklevel=2,
            )
        task.setup(self.model, self.loss_fn, self.device, self.world)
        if self.world > 1:
            self._broadcast_parameters()
        self.steps_per_epoch = max(1, task.steps_per_epoch())
        self.total_steps = self.steps_per_epoch * cfg.train.epochs if self.trainable else 0
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.warmup = int(cfg.train.warmup_fraction * self.total_steps)
        self.step = 0
        self.history = History()
        self.last_logs: dict[str, float] = {}
        self.train_seconds = 0.0
        self._epoch_losses: list[float] = []  # this epoch's losses so far
        self._segment = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of training so far, across resumptions."""
        return self.train_seconds + time.perf_counter() - self._segment

    # ------------------------------------------------------------------ data parallel

    def _trained(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _broadcast_parameters(self) -> None:
        """Every rank starts from rank 0's weights (they are seeded alike; this makes sure)."""
        with torch.no_grad():
            for t in [*self.model.state_dict().values(), *self.loss_fn.state_dict().values()]:
                if t.is_floating_point():
                    dist.broadcast(t, 0)

    def _sum_gradients(self) -> None:
        """Sum the gradients over ranks in one flat all-reduce. Each rank's backward reaches
        the towers through its own rows only, so the sum is the full-batch gradient; the
        loss's own parameters (a temperature) see the whole gathered batch on every rank,
        so theirs are averaged instead. A parameter no rank's backward reached keeps
        ``grad = None`` (so the optimiser skips it, as in one process); one reached on some
        ranks only counts as zero on the others."""
        params = self._trained()
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        used = [p for p, h in zip(params, has.tolist(), strict=True) if h]
        if not used:
            return
        loss_ids = {id(p) for p in self.loss_fn.parameters()}
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in used]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(used, grads, strict=True):
            part = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()
            p.grad = part / self.world if id(p) in loss_ids else part.clone()

    def _rng_states(self) -> list[torch.Tensor]:
        """Every rank's torch RNG state (rank order); just this one's in a single process."""
        state = torch.get_rng_state()
        if self.world == 1:
            return [state]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, state)
        return [torch.as_tensor(x) for x in states]

    # ------------------------------------------------------------------ one step

    def _diverged(self, epoch: int, value: float, why: str = "") -> NoReturn:
        latest = self.run_dir and latest_checkpoint(self.run_dir / "checkpoints")
        raise TrainingDivergedError(
            f"{self.cfg.name}: loss is {value} at step {self.step} (epoch {epoch + 1}){why}; "
            "training stopped. Last good checkpoint: "
            f"{latest if latest is not None else 'none yet'}. Lower train.lr or check the data."
        )

    def train_step(self, epoch: int, index: int) -> float:
        """Forward and backward of batch ``index`` of ``epoch``; leaves the full-batch
        gradients (summed over ranks) in ``.grad`` and returns the loss."""
        batch = self.task.batch(epoch, index, self.rank, self.world)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ):
                out = self.task.step(self.model, self.loss_fn, batch)
        except ValueError as err:  # a NaN refused inside the step: the run diverged
            finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
            if finite and "NaN" not in str(err):
                raise
            self._diverged(epoch, float("nan"), f" ({err})")
        value = float(out.loss.detach())
        self.last_logs = dict(out.logs)
        if not math.isfinite(value):
            self._diverged(epoch, value)
        if out.loss.requires_grad:  # a step that back-propagated itself returns it detached
            loss = self.scaler.scale(out.loss) if self.scaler is not None else out.loss
            loss.backward()  # type: ignore[no-untyped-call]
        if self.world > 1:
            self._sum_gradients()
        return value

    def set_learning_rate(self) -> None:
        """The scheduled learning rate of the current step, in every parameter group."""
        factor = 1.0
        if self.cfg.train.schedule == "cosine":
            factor = lr_factor(self.step, self.total_steps, self.warmup)
        for g in self.optimizer.param_groups:
            g["lr"] = self.cfg.train.lr * factor

    # ------------------------------------------------------------------ checkpoints

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out.update({f"loss.{k}": v for k, v in self.loss_fn.state_dict().items()})
        return out

    def save(self) -> Path | None:
        """Write an atomic checkpoint of everything needed to resume (rank 0 writes; every
        rank's RNG state goes in). Returns its path (``None`` on other ranks)."""
        states = self._rng_states()
        if self.rank != 0 or self.run_dir is None:
            return None
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        opt_tensors["rng.torch"] = states[0]
        for r, st in enumerate(states[1:], start=1):
            opt_tensors[f"rng.torch.rank{r}"] = st
        state = {
            "step": self.step,
            "optimizer": opt_meta,
            "history": {
                "train": self.history.train,
                "val": self.history.val,
                "epochs": self.history.epochs,
            },
            "epoch_losses": self._epoch_losses,
            "train_seconds": self.elapsed(),
        }
        if self.scaler is not None:
            state["grad_scaler"] = dict(self.scaler.state_dict())  # plain numbers
        try:
            return self._write(opt_tensors, state)
        except OSError as err:  # a full disk, a read-only folder: the last checkpoint stands
            last = latest_checkpoint(self.run_dir / "checkpoints")
            raise CheckpointError(
                f"cannot write the checkpoint of step {self.step} to {self.run_dir}: "
                f"{err.strerror or err}; the last complete one "
                f"({last.name if last is not None else 'none yet'}) is kept: make room and "
                "run the same command with --resume"
            ) from None

    def _write(self, opt_tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
        return save_checkpoint(
            self.run_dir / "checkpoints",  # type: ignore[operator]
            f"step-{self.step:08d}",
            self._state_tensors(),
            opt_tensors,
            state,
        )

    def load_weights(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load model and loss weights saved by :meth:`save`."""
        model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        loss = {k[5:]: v for k, v in tensors.items() if k.startswith("loss.")}
        try:
            self.model.load_state_dict(model)
            self.loss_fn.load_state_dict(loss)
        except RuntimeError as err:
            raise CheckpointError(f"checkpoint does not fit the configured model: {err}") from None

    def resume(self) -> bool:
        """Load the latest checkpoint if there is one; return whether one was loaded."""
        if self.run_dir is None:
            return False
        found = newest_valid_checkpoint(self.run_dir / "checkpoints", self.log)
        if found is None:
            return False
        path, tensors, opt, state = found
        self.load_weights(tensors)
        ranks = {k: opt.pop(k) for k in [k for k in opt if k.startswith("rng.torch.rank")]}
        rng = opt.pop("rng.torch", None)
        if self.rank > 0:
            rng = ranks.get(f"rng.torch.rank{self.rank}")
            if rng is None:
                raise CheckpointError(
                    f"{path} was written by fewer than {self.world} processes: it holds no "
                    f"RNG state for rank {self.rank}; resume with the same number of processes"
                )
        self.optimizer.load_state_dict(unflatten_optimizer(opt, state["optimizer"]))
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(dict(state["grad_scaler"]))
        if rng is not None:
            torch.set_rng_state(rng)
        self.step = int(state["step"])
        self.history = History(**state["history"])
        self._epoch_losses = [float(v) for v in state.get("epoch_losses", [])]
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._segment = time.perf_counter()
        self.log(f"resumed from {path} at step {self.step}/{self.total_steps}")
        return True

    # ------------------------------------------------------------------ loop

    def validate(self, epoch: int) -> dict[str, float]:
        """The task's validation metrics (rank 0 only), recorded in the history."""
        if self.rank != 0:
            return {}
        metrics = self.task.validate(self.model)
        if not metrics:
            return {}
        row = {"epoch": float(epoch), "step": float(self.step), **metrics}
        self.history.val.append(row)
        return row

    def _end_epoch(self, epoch: int, losses: list[float]) -> None:
        """Validation, the epoch's mean loss, a checkpoint and the epoch's log line."""
        msg = f"{self.cfg.name}: epoch {epoch + 1} step {self.step}/{self.total_steps}"
        if losses:
            msg += f" loss {np.mean(losses):.4f}"
        if self._epoch_losses:
            self.history.epochs.append(float(np.mean(self._epoch_losses)))
        self._epoch_losses = []
        done_epoch = epoch + 1
        every = self.cfg.train.eval_every
        if every and (done_epoch % every == 0 or self.step == self.total_steps):
            row = self.validate(done_epoch)
            if row:
                msg += self.task.describe(row)
        self.save()
        self.log(msg)

    def fit(self, resume: bool = False, stop_after: int | None = None) -> History:
        """Train to ``total_steps`` (or stop early after ``stop_after`` steps, as a crash would).
        The run folder is locked meanwhile, and must not hold a run of another config.

        Raises:
            TrainingDivergedError: the loss became NaN or infinite; the last checkpoint on
                disk is the last good state.
            ConfigError: another process trains in the folder, or it holds another config.
        """
        lock = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.rank == 0:
                lock = run_lock(self.run_dir)
        try:
            if lock is not None and self.run_dir is not None:
                check_same_config(self.run_dir, self.cfg)
            return self._fit(resume, stop_after)
        finally:
            if lock is not None:
                lock.close()

    def _fit(self, resume: bool, stop_after: int | None) -> History:
        if resume:
            self.resume()
        if self.rank == 0 and self.run_dir is not None:
            self.task.save(self.run_dir)
        self._segment = time.perf_counter()
        self.task.start(self.model, self.progress)
        self.model.train()
        spe, bs = self.steps_per_epoch, self.cfg.train.batch_size
        log_every = max(1, min(25, spe // 4))
        run_steps = 0
        while self.step < self.total_steps:
            epoch, first = divmod(self.step, spe)
            last = min(spe, self.total_steps - epoch * spe)
            bar = tqdm(
                total=last,
                initial=first,
                desc=f"{self.cfg.name} epoch {epoch + 1}/{math.ceil(self.total_steps / spe)}",
                disable=not self.progress,
                leave=False,
                dynamic_ncols=True,
            )
            losses: list[float] = []
            parts: list[dict[str, float]] = []
            t0 = last_line = time.perf_counter()
            for index in range(first, last):
                self.set_learning_rate()
                value = self.train_step(epoch, index)
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                if self.cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self._trained(), self.cfg.train.grad_clip)
                if self.scaler is not None:  # skips a step whose gradients overflowed
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.step += 1
                run_steps += 1
                losses.append(value)
                parts.append(self.last_logs)
                self._epoch_losses.append(value)
                elapsed = time.perf_counter() - t0
                bar.update(1)
                rate = len(losses) * bs / max(elapsed, 1e-9)
                bar.set_postfix(loss=f"{value:.3f}", rows_s=f"{rate:.0f}")
                if not self.progress and self.rank == 0 and t0 + elapsed - last_line >= PLAIN_EVERY:
                    # no bar (a log file, CI): a plain line now and then
                    last_line = t0 + elapsed
                    self.log(
                        f"{self.cfg.name}: epoch {epoch + 1} step {self.step}/{self.total_steps} "
                        f"loss {np.mean(losses[-log_every:]):.4f} ({rate:.0f} rows/s)"
                    )
                if self.step % log_every == 0:
                    row = {"step": float(self.step), "loss": float(np.mean(losses[-log_every:]))}
                    window = parts[-log_every:]  # the parts a composite objective logs
                    for key in window[-1]:
                        row[key] = float(np.mean([p.get(key, np.nan) for p in window]))
                    self.history.train.append(row)
                boundary = self.step % spe == 0 or self.step == self.total_steps
                if stop_after is not None and run_steps >= stop_after:
                    self.save()
                    bar.close()
                    return self.history
                if boundary:
                    break
                if (
                    self.cfg.train.checkpoint_every
                    and self.step % self.cfg.train.checkpoint_every == 0
                ):
                    self.save()
            bar.close()
            self._end_epoch(epoch, losses)
        self.train_seconds = self.elapsed()
        self._segment = time.perf_counter()
        if self.rank == 0 and self.run_dir is not None:
            (self.run_dir / "history.json").write_text(
                json.dumps(
                    {
                        "train": self.history.train,
                        "val": self.history.val,
                        "epochs": self.history.epochs,
                    }
                )
            )
        return self.history


def run_lock(run_dir: Path) -> Any:
    """An exclusive lock on a run folder (``run_dir/.lock``, holding the owner's process id),
    released when the returned file is closed or the process ends.

    Raises:
        ConfigError: another process holds the lock.
    """
    import fcntl
    import os

    handle = (run_dir / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"{run_dir} is in use by process {owner}: wait for it, or choose another --out"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def check_same_config(run_dir: Path, cfg: ExperimentConfig) -> None:
    """Refuse a run folder that holds a run of another config (resuming it would mix them).

    Raises:
        ConfigError: naming the keys that differ.
    """
    from alignfuse.config import load_config, to_dict

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        old = to_dict(load_config(saved))
    except ConfigError:
        return  # an unreadable config of an older version: its checkpoint will not load
    new = to_dict(cfg)

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            out.update(flat(v, key) if isinstance(v, dict) and k != "args" else {key: v})
        return out

    a, b = flat(old), flat(new)
    # what may change between a run and its resumption: its length, how often it validates
    # and checkpoints, where it runs, and what the final evaluation measures
    free = {"name", "train.epochs", "train.max_steps", "train.eval_every"}
    free |= {"train.checkpoint_every", "train.device"}
    differ = sorted(
        k
        for k in a.keys() | b.keys()
        if a.get(k) != b.get(k) and k not in free and not k.startswith("eval.")
    )
    if differ:
        raise ConfigError(
            f"{run_dir} holds a run of another config (it differs in {', '.join(differ)}): "
            "choose another --out, or pass --overwrite to replace it"
        )


class FunctionTask(TaskDefaults):
    """A task made of functions, for training a module outside an experiment (DCCA, the MVAE,
    the graph matcher, the fusion suite's heads): the loop's features without a config file.

    Args:
        cfg: the experiment config whose ``name`` and ``train`` section the loop reads.
        build: returns the module to train (called after seeding).
        epoch_batches: the batches of an epoch, a pure function of the epoch (each batch is
            whatever ``loss`` takes); every epoch has as many.
        loss: the scalar loss of the module on one batch.
    """

    name: ClassVar[str] = "function"

    def __init__(
        self,
        cfg: ExperimentConfig,
        build: Callable[[], nn.Module],
        epoch_batches: Callable[[int], Sequence[Any]],
        loss: Callable[[nn.Module, Any], torch.Tensor],
    ) -> None:
        self.cfg = cfg
        self._build, self._batches, self._loss = build, epoch_batches, loss
        self._epoch: tuple[int, Sequence[Any]] | None = None

    def build(self) -> tuple[nn.Module, nn.Module]:
        return self._build(), nn.Identity()

    def _epoch_batches(self, epoch: int) -> Sequence[Any]:
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self._batches(epoch))
        return self._epoch[1]

    def steps_per_epoch(self) -> int:
        return len(self._epoch_batches(0))

    def batch(self, epoch: int, index: int, rank: int, world: int) -> Any:
        return self._epoch_batches(epoch)[index]

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: Any) -> LossOutput:
        return LossOutput(self._loss(model, batch))

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], Any]:
        return {}, None


def permuted_batches(n: int, batch_size: int, seed: int) -> list[torch.Tensor]:
    """Row indices of ``n`` rows in a permutation drawn with ``seed``, cut into batches of
    ``batch_size`` (the last may be smaller): one epoch's batches for :func:`fit_module`."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [order[s : s + batch_size] for s in range(0, n, batch_size)]


def fit_module(
    name: str,
    build: Callable[[], nn.Module],
    epoch_batches: Callable[[int], Sequence[Any]],
    loss: Callable[[nn.Module, Any], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    optimizer: str = "adamw",
    seed: int | None = 0,
    device: torch.device | str = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
) -> tuple[nn.Module, list[float]]:
    """Train ``build()`` with the one loop at a constant learning rate, no clipping and no
    validation; return the trained module (in eval mode) and each epoch's mean loss.

    ``seed=None`` keeps the caller's random state (a module built and seeded already);
    with ``checkpoint_dir`` a checkpoint is written at every epoch's end and a later call
    resumes from the latest one exactly.

    Example:
        >>> x = torch.randn(64, 3)
        >>> y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
        >>> batches = lambda epoch: [torch.arange(i, i + 16) for i in range(0, 64, 16)]
        >>> net, history = fit_module(
        ...     "regression", lambda: nn.Linear(3, 1), batches,
        ...     lambda m, idx: ((m(x[idx]) - y[idx]) ** 2).mean(),
        ...     epochs=30, lr=0.1, progress=False)
        >>> len(history), history[-1] < 0.1 * history[0]
        (30, True)
    """
    from alignfuse.config import TrainConfig

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    train = TrainConfig(
        epochs=epochs,
        batch_size=1,
        lr=lr,
        weight_decay=weight_decay,
        warmup_fraction=0.0,
        schedule="constant",
        optimizer=optimizer,
        grad_clip=0.0,
        seed=0 if seed is None else seed,
        device=str(device),
        eval_every=0,
        checkpoint_every=0,
    )
    task = FunctionTask(ExperimentConfig(name=name, train=train), build, epoch_batches, loss)
    fit = Fit(task, checkpoint_dir, progress=progress, log=lambda msg: None, seed=seed is not None)
    history = fit.fit(resume=checkpoint_dir is not None)
    return fit.model.eval(), history.epochs


def load_run(run_dir: str | Path, progress: bool = False) -> Fit:
    """The loop of a finished (or interrupted) run folder, its model holding the weights of
    the latest checkpoint; a model with nothing to train needs none.

    Raises:
        CheckpointError: the folder holds no config, or no checkpoint for a trained model.
    """
    from alignfuse.config import load_config
    from alignfuse.tasks import create_task

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise CheckpointError(f"{run} is not a run folder (no config.yaml)")
    cfg = load_config(run / "config.yaml")
    fit = Fit(create_task(cfg, run_dir=run), None, progress=progress, log=lambda msg: None)
    fit.run_dir = run
    found = newest_valid_checkpoint(run / "checkpoints", log=lambda m: print(m, file=sys.stderr))
    if found is not None:
        fit.load_weights(found[1])
    elif fit.trainable:
        raise CheckpointError(f"{run} holds no checkpoint")
    fit.model.eval()
    return fit
