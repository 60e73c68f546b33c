"""The training loop: device-agnostic, seeded, resumable, with progress and validation.

AdamW with linear warm-up then cosine decay; each epoch visits every image
``captions_per_image`` times, each time with another of its captions, in an order that is
a pure function of ``(seed, epoch)`` so a resumed run replays exactly the batches an
uninterrupted one would.

Data parallel: when ``torch.distributed`` is initialised (``torchrun --nproc_per_node N
-m alignfuse.cli train ...``), every rank takes its ``batch_size / N`` rows of each global
batch, the embeddings are gathered (:func:`alignfuse.distributed.all_gather_with_grad`) so
the loss is the full-batch loss, and the gradients are summed over ranks in one flat
all-reduce before clipping and the optimiser step: each step equals the single-process step
on the same global batch (up to float rounding; BatchNorm statistics are per rank, as in
DDP without SyncBatchNorm). Rank 0 alone validates, logs, shows progress and writes
checkpoints; every rank's RNG state is saved, so a resumed run replays the same steps.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from alignfuse.config import ExperimentConfig, save_config
from alignfuse.data.base import ImageTextData
from alignfuse.distributed import all_gather_with_grad
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.checkpoint import (
    flatten_optimizer,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    unflatten_optimizer,
)
from alignfuse.engine.evaluate import evaluate_split, images_to_tensor
from alignfuse.engine.grad_cache import grad_cache_step
from alignfuse.errors import CheckpointError, ConfigError, TrainingDivergedError
from alignfuse.registry import DATASETS, LOSSES, MODELS


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"train.device {name!r} is not a device: {err}") from None


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy's legacy global generator."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def load_data(cfg: ExperimentConfig) -> ImageTextData:
    """Build the configured dataset from the registry."""
    data: ImageTextData = DATASETS.create(cfg.data.name, **cfg.data.args)
    if "train" not in data.splits:
        raise ConfigError(f"dataset {cfg.data.name!r} has no 'train' split")
    return data


def build_model(cfg: ExperimentConfig, tokenizer: Tokenizer | None) -> nn.Module:
    """Build the configured model (seeded) from the registry."""
    torch.manual_seed(cfg.train.seed)
    model: nn.Module = MODELS.create(
        cfg.model.name,
        tokenizer=tokenizer,
        embed_dim=cfg.model.embed_dim,
        image_encoder=cfg.model.image_encoder,
        text_encoder=cfg.model.text_encoder,
        **cfg.model.args,
    )
    return model


def build_loss(cfg: ExperimentConfig) -> nn.Module:
    """Build the configured loss from the registry."""
    loss: nn.Module = LOSSES.create(cfg.loss.name, **cfg.loss.args)
    return loss


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class History:
    """What a run records: smoothed training loss and validation metrics."""

    train: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Train an image-text model: a dual encoder (the loss on its two embeddings) or a
    pairwise model such as SCAN (``model.pairwise``; the loss's ``from_similarity`` on the
    model's own batch score matrix), or a model with its own objective around the
    configured loss, such as ALBEF (``model.training_loss(batch, loss)``; the history then
    records each part it logs).

    Args:
        cfg: the resolved experiment config.
        data: the dataset (must have ``train``; ``val`` is used for validation if present).
        run_dir: where checkpoints, the config, the vocabulary and the history go.
        progress: show progress bars (default: when stderr is a terminal).
        log: where to print one line per epoch (default: stderr).
    """

    def __init__(
        self,
        cfg: ExperimentConfig,
        data: ImageTextData,
        run_dir: str | Path,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.data = data
        self.run_dir = Path(run_dir)
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world = dist.get_world_size() if distributed else 1
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.progress = self.progress and self.rank == 0
        say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.log = say if self.rank == 0 else (lambda msg: None)
        self.device = resolve_device(cfg.train.device)
        vocab = self.run_dir / "vocab.json"
        self.tokenizer = (
            Tokenizer.load(vocab) if vocab.is_file() else Tokenizer.build(data.train_texts)
        )
        self.model = build_model(cfg, self.tokenizer).to(self.device)
        self.loss_fn = build_loss(cfg).to(self.device)
        params = [
            p for p in [*self.model.parameters(), *self.loss_fn.parameters()] if p.requires_grad
        ]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        n_img = len(data["train"])
        k = cfg.train.captions_per_image
        if k < 1:
            raise ConfigError(f"train.captions_per_image must be >= 1, got {k}")
        if cfg.train.batch_size < 2:
            raise ConfigError(f"train.batch_size must be >= 2, got {cfg.train.batch_size}")
        self.pairwise = bool(getattr(self.model, "pairwise", False))
        self.composite = callable(getattr(self.model, "training_loss", None))
        self.last_logs: dict[str, float] = {}
        if self.composite and (self.world > 1 or cfg.train.grad_cache_chunk):
            raise ConfigError(
                f"model {cfg.model.name!r} trains on its own objective (training_loss): it "
                "trains in one process without GradCache (train.grad_cache_chunk: null)"
            )
        if self.pairwise:
            if not callable(getattr(self.loss_fn, "from_similarity", None)):
                raise ConfigError(
                    f"model {cfg.model.name!r} scores pairs (no per-item embedding): its loss "
                    f"needs from_similarity(); {cfg.loss.name!r} has none (use info_nce or triplet)"
                )
            if self.world > 1 or cfg.train.grad_cache_chunk:
                raise ConfigError(
                    f"model {cfg.model.name!r} scores pairs: it trains in one process without "
                    "GradCache (train.grad_cache_chunk: null)"
                )
        if self.world > 1:
            if cfg.train.batch_size % self.world:
                raise ConfigError(
                    f"train.batch_size={cfg.train.batch_size} must be a multiple of the "
                    f"{self.world} processes (each takes an equal slice of a batch)"
                )
            if cfg.train.grad_cache_chunk:
                raise ConfigError(
                    "train.grad_cache_chunk is not supported with several processes: set it "
                    "to null (each process already holds only its slice of a batch)"
                )
            self._broadcast_parameters()
        if cfg.train.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {cfg.train.epochs}")
        self.steps_per_epoch = max(1, (n_img * k) // cfg.train.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.warmup = int(cfg.train.warmup_fraction * self.total_steps)
        self.step = 0
        self.history = History()
        self.train_seconds = 0.0
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
        the encoders through its own rows only, so the sum is the full-batch gradient; the
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

    def train_step(self, epoch: int, index: int, pairs: tuple[np.ndarray, np.ndarray]) -> float:
        """Forward and backward of batch ``index`` of ``epoch``; leaves the full-batch
        gradients (summed over ranks) in ``.grad`` and returns the loss."""
        batch = self.batch(epoch, index, pairs)
        self.optimizer.zero_grad(set_to_none=True)
        chunk = self.cfg.train.grad_cache_chunk
        if self.composite:  # the model's own objective around the configured loss
            out = self.model.training_loss(batch, self.loss_fn)  # type: ignore[operator]
        elif self.pairwise:  # the model's own (B, B) score matrix
            out = self.loss_fn.from_similarity(self.model(batch["images"], batch["text"]))  # type: ignore[operator]
        elif chunk:
            out = grad_cache_step(self.model, self.loss_fn, batch["images"], batch["text"], chunk)
        else:
            a, b = self.model(batch["images"], batch["text"])
            if self.world > 1:
                a, b = all_gather_with_grad(a), all_gather_with_grad(b)
            out = self.loss_fn(a, b)
        value = float(out.loss.detach())
        self.last_logs = dict(out.logs)
        if not math.isfinite(value):
            latest = latest_checkpoint(self.run_dir / "checkpoints")
            raise TrainingDivergedError(
                f"{self.cfg.name}: loss is {value} at step {self.step} (epoch {epoch + 1}); "
                "training stopped. Last good checkpoint: "
                f"{latest if latest is not None else 'none yet'}. Lower train.lr or "
                "check the data."
            )
        if not chunk:
            out.loss.backward()  # type: ignore[no-untyped-call]
        if self.world > 1:
            self._sum_gradients()
        return value

    # ------------------------------------------------------------------ data order

    def epoch_pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The (image, caption) index pairs of an epoch, in training order."""
        split = self.data["train"]
        n = len(split)
        k = self.cfg.train.captions_per_image
        rng = np.random.default_rng([self.cfg.train.seed, epoch])
        n_caps = np.array([len(c) for c in split.captions])
        offsets = rng.integers(0, 1 << 30, size=n)
        imgs, caps = [], []
        for r in range(k):
            order = rng.permutation(n)
            imgs.append(order)
            caps.append((offsets[order] + r) % n_caps[order])
        return np.concatenate(imgs), np.concatenate(caps)

    def batch(self, epoch: int, index: int, pairs: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        """Tensors of batch ``index`` of ``epoch`` on the training device."""
        bs = self.cfg.train.batch_size
        per = bs // self.world  # this rank's slice of the global batch
        lo = index * bs + self.rank * per
        imgs, caps = pairs[0][lo : lo + per], pairs[1][lo : lo + per]
        split = self.data["train"]
        texts = [split.captions[i][c] for i, c in zip(imgs, caps, strict=True)]
        prep = self.model.prepare_text(texts)  # type: ignore[operator]
        return {
            "images": images_to_tensor(split.images[imgs], self.device),
            "text": {k: v.to(self.device) for k, v in prep.items()},
            "image_ids": torch.from_numpy(np.asarray(imgs, dtype=np.int64)).to(self.device),
        }

    # ------------------------------------------------------------------ checkpoints

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out.update({f"loss.{k}": v for k, v in self.loss_fn.state_dict().items()})
        return out

    def save(self) -> Path | None:
        """Write an atomic checkpoint of everything needed to resume (rank 0 writes; every
        rank's RNG state goes in). Returns its path (``None`` on other ranks)."""
        states = self._rng_states()
        if self.rank != 0:
            return None
        opt_tensors, opt_meta = flatten_optimizer(self.optimizer.state_dict())
        opt_tensors["rng.torch"] = states[0]
        for r, st in enumerate(states[1:], start=1):
            opt_tensors[f"rng.torch.rank{r}"] = st
        state = {
            "step": self.step,
            "optimizer": opt_meta,
            "history": {"train": self.history.train, "val": self.history.val},
            "train_seconds": self.elapsed(),
        }
        return save_checkpoint(
            self.run_dir / "checkpoints",
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
        path = latest_checkpoint(self.run_dir / "checkpoints")
        if path is None:
            return False
        tensors, opt, state = load_checkpoint(path)
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
        if rng is not None:
            torch.set_rng_state(rng)
        self.step = int(state["step"])
        self.history = History(**state["history"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self._segment = time.perf_counter()
        self.log(f"resumed from {path} at step {self.step}/{self.total_steps}")
        return True

    # ------------------------------------------------------------------ loop

    def validate(self, epoch: int) -> dict[str, float]:
        """Retrieval on (a subset of) the validation split (rank 0 only)."""
        if "val" not in self.data.splits or self.rank != 0:
            return {}
        split = self.data["val"].subset(self.cfg.eval.val_subset)
        res = evaluate_split(self.model, split, self.cfg.eval.batch_size)
        res.pop("_sims", None)
        res.pop("_captions", None)
        row = {
            "epoch": float(epoch),
            "step": float(self.step),
            **{k: float(v) for k, v in res.items()},
        }
        self.history.val.append(row)
        return row

    def fit(self, resume: bool = False, stop_after: int | None = None) -> History:
        """Train to ``total_steps`` (or stop early after ``stop_after`` steps, as a crash would).

        Raises:
            TrainingDivergedError: the loss became NaN or infinite; the last checkpoint on
                disk is the last good state.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        if self.rank == 0:
            save_config(self.cfg, self.run_dir / "config.yaml")
            self.tokenizer.save(self.run_dir / "vocab.json")
        self._segment = time.perf_counter()
        precompute = getattr(getattr(self.model, "text_encoder", None), "precompute", None)
        if callable(precompute):
            self.log("embedding training captions with the frozen text encoder ...")
            precompute(self.data.train_texts, show_progress=self.progress)
        self.model.train()
        spe, bs = self.steps_per_epoch, self.cfg.train.batch_size
        log_every = max(1, min(25, spe // 4))
        run_steps = 0
        while self.step < self.total_steps:
            epoch, first = divmod(self.step, spe)
            pairs = self.epoch_pairs(epoch)
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
            t0 = time.perf_counter()
            for index in range(first, last):
                for g in self.optimizer.param_groups:
                    g["lr"] = self.cfg.train.lr * lr_factor(
                        self.step, self.total_steps, self.warmup
                    )
                value = self.train_step(epoch, index, pairs)
                if self.cfg.train.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self._trained(), self.cfg.train.grad_clip)
                self.optimizer.step()
                self.step += 1
                run_steps += 1
                losses.append(value)
                parts.append(self.last_logs)
                elapsed = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(
                    loss=f"{value:.3f}", pairs_s=f"{len(losses) * bs / max(elapsed, 1e-9):.0f}"
                )
                if self.step % log_every == 0:
                    row = {"step": float(self.step), "loss": float(np.mean(losses[-log_every:]))}
                    if self.composite:  # its parts too (ITC, ITM, MLM, ...)
                        window = parts[-log_every:]
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
            msg = f"{self.cfg.name}: epoch {epoch + 1} step {self.step}/{self.total_steps}"
            if losses:
                msg += f" loss {np.mean(losses):.4f}"
            done_epoch = epoch + 1
            if self.cfg.train.eval_every and (
                done_epoch % self.cfg.train.eval_every == 0 or self.step == self.total_steps
            ):
                row = self.validate(done_epoch)
                if "rsum" in row:
                    msg += f" val rsum {row['rsum']:.1f} t2i R@10 {row['t2i_r10']:.3f}"
                elif "cider" in row:
                    msg += f" val CIDEr-D {row['cider']:.3f} BLEU-4 {row['bleu_4']:.3f}"
            self.save()
            self.log(msg)
        self.train_seconds = self.elapsed()
        self._segment = time.perf_counter()
        if self.rank == 0:
            (self.run_dir / "history.json").write_text(
                json.dumps({"train": self.history.train, "val": self.history.val})
            )
        return self.history
