"""Atomic checkpoints: safetensors weights + JSON state, never a pickle.

A checkpoint is a folder ``checkpoints/step-XXXXXXX/`` holding ``model.safetensors`` (the
model and loss state), ``optim.safetensors`` (optimiser moments and RNG state) and
``state.json`` (counters, history, SHA-256 of both weight files). It is written under a
temporary name and renamed into place; then ``checkpoints/latest`` (a one-line file) is
replaced atomically. A crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from alignfuse._io import sha256_file
from alignfuse.errors import CheckpointError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser ``state_dict`` into tensors (for safetensors) and JSON data."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in state["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        if not name.startswith("state."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = val
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    folder: str | Path,
    name: str,
    model_state: dict[str, torch.Tensor],
    optim_tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``name`` under ``folder`` atomically and point ``latest`` at it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder))
    try:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in model_state.items()},
            str(tmp / "model.safetensors"),
        )
        save_file(optim_tensors, str(tmp / "optim.safetensors"))
        full = dict(state)
        full["sha256"] = {
            f: sha256_file(tmp / f) for f in ("model.safetensors", "optim.safetensors")
        }
        with (tmp / "state.json").open("w") as fh:
            json.dump(full, fh)
            fh.flush()
            os.fsync(fh.fileno())
        final = folder / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(folder)
        pointer = folder / ".latest.tmp"
        pointer.write_text(name + "\n")
        os.replace(pointer, folder / "latest")
        _fsync_dir(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    old = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for p in old[:-keep]:
        if p.name != name:
            shutil.rmtree(p, ignore_errors=True)
    return folder / name


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The folder named by ``folder/latest``, or ``None`` when there is no checkpoint."""
    pointer = Path(folder) / "latest"
    if not pointer.is_file():
        return None
    path = Path(folder) / pointer.read_text().strip()
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint pointer {str(pointer)!r} names a missing folder {path.name!r}"
        )
    return path


def newest_valid_checkpoint(
    folder: str | Path, log: Callable[[str], None] | None = None
) -> tuple[Path, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]] | None:
    """The checkpoint ``latest`` names, read and verified; if it is missing or corrupt, the
    newest other checkpoint that verifies (``log`` says which was skipped and why). ``None``
    when the folder holds no checkpoint at all; an error when none verifies."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True
    )
    pointer = folder / "latest"
    named = folder / pointer.read_text().strip() if pointer.is_file() else None
    if named is not None:
        candidates = [named] + [p for p in candidates if p != named]
    problems = []
    for path in candidates:
        if not path.is_dir():
            problems.append(f"{path.name}: missing")
            continue
        try:
            model, optim, state = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(f"{path.name}: {err}")
            continue
        if problems and log is not None:
            log(f"skipped {'; '.join(problems)}; resuming from {path.name} instead")
        return path, model, optim, state
    if not problems:
        return None
    raise CheckpointError(f"no valid checkpoint in {str(folder)!r}: {'; '.join(problems)}")


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint folder: model tensors, optimiser tensors, JSON state."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        digests = state["sha256"]
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has no readable state.json: {err}"
        ) from None
    for fname, digest in digests.items():
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} is missing {fname}")
        if sha256_file(f) != digest:
            raise CheckpointError(
                f"checkpoint file {str(f)!r} is corrupt (SHA-256 differs from state.json); "
                "delete the folder to resume from the previous checkpoint, or start afresh"
            )
    try:
        model = load_file(str(path / "model.safetensors"))
        optim = load_file(str(path / "optim.safetensors"))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {err}") from None
    return model, optim, state


def initial_state(source: str | Path) -> dict[str, torch.Tensor]:
    """The model state ``model.init`` names: a run folder (its latest checkpoint), a
    checkpoint folder, a ``.safetensors`` file, or a ``.pt`` / ``.pth`` / ``.bin`` state dict
    (read with ``weights_only=True``)."""
    path = Path(source)
    if path.is_dir():
        folder = (
            latest_checkpoint(path / "checkpoints") if (path / "checkpoints").is_dir() else None
        )
        if folder is None and (path / "state.json").is_file():
            folder = path
        if folder is None:
            raise CheckpointError(
                f"model.init: {str(path)!r} holds no checkpoint (expected a run folder with "
                "checkpoints/latest, or a checkpoint folder with state.json)"
            )
        tensors = load_checkpoint(folder)[0]  # the engine's: "model.*" and "loss.*" keys
        return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    if not path.is_file():
        raise CheckpointError(f"model.init: {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"model.init: {str(path)!r} cannot be read: {err}") from None
    if path.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # an unpickling refusal or a corrupt file
            raise CheckpointError(
                f"model.init: {str(path)!r} cannot be read safely: {err}"
            ) from None
        if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            return state
        raise CheckpointError(f"model.init: {str(path)!r} does not hold a state dict of tensors")
    raise CheckpointError(
        f"model.init: {str(path)!r} is neither a folder nor a .safetensors / .pt / .pth / .bin file"
    )


def apply_initial_state(model: torch.nn.Module, source: str | Path) -> None:
    """Load ``model.init``'s weights into ``model``; every name and shape must match."""
    state = initial_state(source)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [
            f"{label} {names[:3]}"
            for label, names in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("other shape", wrong),
            )
            if names
        ]
        raise CheckpointError(
            f"model.init: {str(source)!r} does not fit the model: {'; '.join(parts)}"
        )
    model.load_state_dict(state)
