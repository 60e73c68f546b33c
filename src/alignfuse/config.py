"""Typed experiment configuration: dataclasses, YAML files and dotted overrides.

An experiment config names registry entries (dataset, model, loss) with their arguments,
plus the training and evaluation settings. It is loaded from YAML with ``yaml.safe_load``;
command-line overrides use dotted keys (``model.embed_dim=256 train.epochs=3``), their
values parsed as YAML scalars. An unknown key is an error naming the key and the closest
valid one.

Example:
    >>> cfg = load_config(None, ["model.embed_dim=128", "train.epochs=2"])
    >>> cfg.model.embed_dim, cfg.train.epochs
    (128, 2)
    >>> load_config(None, ["model.embd_dim=3"])
    Traceback (most recent call last):
    ...
    alignfuse.errors.ConfigError: unknown config key 'model.embd_dim'; did you mean 'model.embed_dim'?
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from alignfuse.errors import ConfigError
from alignfuse.registry import suggest


@dataclass
class TaskConfig:
    """Which task trains and evaluates the experiment (a registered task, ``alignfuse list
    tasks``) plus its own arguments: ``image_text`` (the default) or ``speech_text``."""

    name: str = "image_text"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """Which dataset to train and evaluate on.

    ``name`` is a registered dataset (``shapes`` or ``captions``); ``args`` are passed to it
    (for ``shapes``: ``n_train``, ``n_val``, ``n_test``, ``image_size``, ``seed``, ...; for
    ``captions``: ``root``, ``annotations``).
    """

    name: str = "shapes"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """The model: a registered model name plus its arguments."""

    name: str = "dual_encoder"
    embed_dim: int = 256
    image_encoder: str = "cnn"
    text_encoder: str = "bigru"
    args: dict[str, Any] = field(default_factory=dict)
    # weights to start from: a run folder (its latest checkpoint), a checkpoint folder, or a
    # .safetensors / .pt state dict with the model's parameter names and shapes
    init: str | None = None


@dataclass
class LossConfig:
    """The training objective: a registered loss name plus its arguments."""

    name: str = "info_nce"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation settings: AdamW (``optimizer: adamw``, or ``adam``) with linear warm-up
    then cosine decay (``schedule: cosine``) or a constant learning rate (``constant``); ``grad_clip: 0`` clips nothing,
    ``eval_every: 0`` never validates, ``checkpoint_every: 0`` checkpoints at epoch ends only.
    ``precision``: ``fp32``, or ``bf16`` / ``fp16`` autocast of the forward (losses in
    float32; fp16 with a gradient scaler), or ``auto``: ``bf16`` where the device has native
    bfloat16 arithmetic (a CUDA GPU that supports it, a CPU with AVX-512 BF16 or AMX), else
    ``fp32``."""

    epochs: int = 6
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    schedule: str = "cosine"
    optimizer: str = "adamw"
    grad_clip: float = 2.0
    seed: int = 0
    device: str = "auto"
    eval_every: int = 1
    checkpoint_every: int = 200
    max_steps: int | None = None
    captions_per_image: int = 5
    grad_cache_chunk: int | None = None
    precision: str = "fp32"


@dataclass
class EvalConfig:
    """Evaluation settings. A split the data does not have is an error, except ``test_dk``
    (the built-in data's unseen-words split), evaluated where the data has it."""

    splits: list[str] = field(default_factory=lambda: ["test", "test_dk"])
    batch_size: int = 256
    val_subset: int = 500
    # dual encoders: also caption each test image by its most similar training caption
    # (nearest-neighbour captioning; BLEU / ROUGE-L / CIDEr-D as for a generative model)
    retrieval_captioning: bool = False


@dataclass
class ExperimentConfig:
    """One experiment: its task, data, model, loss, training and evaluation."""

    name: str = "experiment"
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


T = TypeVar("T")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_value(path: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(path, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"config key {path!r}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {path!r} expects a list, got {value!r}")
        return [_check_value(f"{path}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {path!r} expects a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {path!r} expects true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {path!r} expects an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {path!r} expects a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {path!r} expects a string, got {value!r}")
        return value
    if _is_dataclass_type(tp):
        return from_dict(tp, value, prefix=path)
    return value  # pragma: no cover - no other field types are used


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping, checking keys and value types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        where = f"config section {prefix!r}" if prefix else "config"
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            valid = [f"{prefix}.{k}" if prefix else k for k in fields]
            raise ConfigError(f"unknown config key {path!r}{suggest(path, valid)}")
        kwargs[key] = _check_value(path, value, hints[key])
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass."""
    return dataclasses.asdict(cfg)


def _all_keys(cls: type[Any], prefix: str = "") -> list[str]:
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}.{f.name}" if prefix else f.name
        keys.append(path)
        if _is_dataclass_type(hints[f.name]):
            keys.extend(_all_keys(hints[f.name], path))
    return keys


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``, nested mappings merged key by key (copies, never the
    inputs).

    Example:
        >>> deep_merge({"train": {"epochs": 3, "lr": 0.1}}, {"train": {"epochs": 4}})
        {'train': {'epochs': 4, 'lr': 0.1}}
    """
    out = copy.deepcopy(base)
    for k, v in over.items():
        old = out.get(k)
        out[k] = (
            deep_merge(old, v)
            if isinstance(v, dict) and isinstance(old, dict)
            else copy.deepcopy(v)
        )
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a nested dict (values parsed as YAML)."""
    out: dict[str, Any] = json.loads(json.dumps(data))
    valid = _all_keys(ExperimentConfig)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        # Keys below a free-form ``args`` mapping are not checked here but by the component.
        head = []
        for p in parts:
            head.append(p)
            if p == "args":
                break
        checked = ".".join(head)
        if checked not in valid:
            raise ConfigError(f"unknown config key {key!r}{suggest(key, valid)}")
        value = safe_yaml(raw, f"override {item!r}: the value") if raw.strip() else ""
        node: dict[str, Any] = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return out


def safe_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load(text)``, or a one-line :class:`ConfigError` saying where ``what``
    (e.g. ``"config file 'a.yaml'"``) stops being valid YAML."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{what} is not valid YAML: {problem}{where}") from None


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load an experiment config from a YAML file (or defaults) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        loaded = safe_yaml(p.read_text(), f"config file {str(p)!r}")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping at the top level")
        data = loaded or {}
    data = apply_overrides(data, overrides or [])
    return from_dict(ExperimentConfig, data)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def config_hash(cfg: ExperimentConfig) -> str:
    """Short stable hash of the resolved config (12 hex digits)."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
