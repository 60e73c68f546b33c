"""The frozen dual encoder that the ``vqa``, ``matching`` and ``rerank`` tasks (suite
``fusion``) read their image and word tokens from.

A CLIP-style dual encoder (CNN + BiGRU, InfoNCE) is trained once on the image-text data; its
CNN is then frozen and its spatial tokens are the image input of every fusion, so fusions are
compared on the same visual features (the frozen-encoder regime of BLIP-2). It is trained as
an ``image_text`` experiment through the one loop, into a run folder under the alignfuse cache
named by the hash of its resolved config: a later suite (or another task of the same suite)
with the same settings reuses it, an interrupted one resumes it.

``task.args.pretrain`` holds that experiment's settings as overrides of
:data:`PRETRAIN` (e.g. ``{train: {epochs: 4}}``); its data is the task's ``data`` section.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignfuse.config import ExperimentConfig, config_hash, deep_merge, from_dict, to_dict
from alignfuse.data.base import ImageTextData
from alignfuse.engine.evaluate import images_to_tensor
from alignfuse.errors import ConfigError
from alignfuse.registry import DATASETS

PRETRAIN: dict[str, Any] = {
    "name": "fusion_pretrain",
    "model": {"embed_dim": 128},
    "train": {"epochs": 3, "checkpoint_every": 0},
    "eval": {"splits": ["test"], "val_subset": 200},
}


@dataclass
class HeadArgs:
    """``task.args`` of a fusion head trained on the frozen towers (``vqa``, ``matching``)."""

    width: int = 64  # the fusion's output width
    pretrain: dict[str, Any] = field(default_factory=dict)  # the frozen towers' settings


def head_args(cfg: ExperimentConfig, task: str, data: Any, data_type: type) -> HeadArgs:
    """The checked arguments of a fusion head: the fusion (``model.name``) is registered, the
    width positive, and the data is the task's own (what its ``load_data`` returned)."""
    from alignfuse.registry import FUSION
    from alignfuse.tasks.base import task_args

    args = task_args(HeadArgs, cfg)
    FUSION.get(cfg.model.name)  # an unknown fusion is named, with the closest one
    if args.width < 1:
        raise ConfigError(f"task.args.width must be a positive integer, got {args.width}")
    if not isinstance(data, data_type):
        raise ConfigError(
            f"task {task!r} needs its own data (load_data); got {type(data).__name__}"
        )
    return args


@dataclass
class FrozenTowers:
    """The data, the trained dual encoder (frozen, in eval mode), its results row and the
    image tokens of the train and test splits."""

    data: ImageTextData
    model: Any
    row: dict[str, Any]
    train_tokens: torch.Tensor
    test_tokens: torch.Tensor


_LOADED: dict[str, FrozenTowers] = {}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pretrain_config(cfg: ExperimentConfig, pretrain: dict[str, Any]) -> ExperimentConfig:
    """The ``image_text`` experiment that trains the towers: :data:`PRETRAIN` with
    ``pretrain``'s overrides, on the task's data."""
    if not isinstance(pretrain, dict):
        raise ConfigError(f"task.args.pretrain must be a mapping, got {pretrain!r}")
    merged = deep_merge(PRETRAIN, pretrain)
    merged["data"] = to_dict(cfg.data)
    merged["task"] = {"name": "image_text"}
    return from_dict(ExperimentConfig, merged, prefix="task.args.pretrain")


def frozen_towers(cfg: ExperimentConfig, pretrain: dict[str, Any]) -> FrozenTowers:
    """The trained, frozen towers for ``cfg``'s data (trained on first use, then reused
    from the cache folder and, within a process, from memory)."""
    from alignfuse.bench.runner import run_experiment
    from alignfuse.data.cache import default_cache_dir

    pre = pretrain_config(cfg, pretrain)
    key = config_hash(pre)
    if key in _LOADED:
        return _LOADED[key]
    data = DATASETS.create(cfg.data.name, **cfg.data.args)
    if not isinstance(data, ImageTextData):
        raise ConfigError(
            f"the fusion tasks need image-text data; data {cfg.data.name!r} is "
            f"{type(data).__name__}"
        )
    run_dir = default_cache_dir() / "pretrained" / key
    done = (run_dir / "metrics.json").is_file()
    _log(
        f"frozen towers: {'reusing' if done else 'training'} {pre.name} (config {key}) in {run_dir}"
    )
    row, fit, _, _ = run_experiment(pre, data, run_dir, progress=None, log=_log)
    _log(
        f"frozen towers: test t2i R@1 {row['metrics']['test/t2i_r1']:.3f} "
        f"({row['train_seconds']:.0f} s of training)"
    )
    assert fit is not None  # the image_text task is trained by the loop
    model = fit.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    towers = FrozenTowers(
        data,
        model,
        {k: row[k] for k in ("metrics", "train_seconds", "config_hash")},
        image_tokens(model, data["train"].images),
        image_tokens(model, data["test"].images),
    )
    _LOADED[key] = towers
    return towers


@torch.no_grad()
def image_tokens(model: Any, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """The frozen image tower's spatial tokens ``(N, R, D)`` of ``images``."""
    out = [
        model.image_encoder.tokens(images_to_tensor(images[s : s + batch]))
        for s in range(0, len(images), batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def word_tokens(
    model: Any, texts: list[str], batch: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """The text tower's projected word tokens ``(N, L, E)`` and their mask ``(N, L)``."""
    toks, masks = [], []
    for s in range(0, len(texts), batch):
        prep = model.prepare_text(texts[s : s + batch])
        t = model.text_encoder.tokens(**prep)
        toks.append(model.text_proj(t))
        masks.append(torch.arange(t.shape[1])[None] < prep["lengths"][:, None])
    width = max(t.shape[1] for t in toks)
    toks = [F.pad(t, (0, 0, 0, width - t.shape[1])) for t in toks]
    masks = [F.pad(m, (0, width - m.shape[1])) for m in masks]
    return torch.cat(toks), torch.cat(masks)
