"""The on-disk cache of generated datasets: numpy arrays + a JSON annotation file, written
atomically (temporary folder, then a rename) with a manifest of SHA-256 checksums that is
verified on every read. A corrupt cache warns and is regenerated. Arrays read from the cache
are memory-mapped (read-only), so a dataset larger than memory streams from disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alignfuse._io import sha256_file

Arrays = dict[str, np.ndarray]


def default_cache_dir() -> Path:
    """``$ALIGNFUSE_CACHE``, else ``~/.cache/alignfuse``."""
    env = os.environ.get("ALIGNFUSE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "alignfuse"


def cache_folder(dataset: str, params: dict[str, Any], cache_dir: str | Path | None) -> Path:
    """The folder of one parameter set of ``dataset`` (a hash of the parameters)."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / dataset / key


def write_cache(folder: Path, arrays: Arrays, ann: dict[str, Any], params: dict[str, Any]) -> None:
    """Write ``arrays`` (``name.npy`` each) and ``annotations.json`` into ``folder`` atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        names = []
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
            names.append(f"{name}.npy")
        (tmp / "annotations.json").write_text(json.dumps(ann))
        names.append("annotations.json")
        files = {name: sha256_file(tmp / name) for name in names}
        (tmp / "manifest.json").write_text(json.dumps({"params": params, "files": files}, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_cache(folder: Path, dataset: str) -> tuple[Arrays, dict[str, Any]] | None:
    """The cached arrays and annotations, or ``None`` if absent or corrupt (with a warning)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
        for name, digest in files.items():
            if sha256_file(folder / name) != digest:
                raise ValueError(f"checksum mismatch for {name}")
        arrays = {
            # memory-mapped: rows are read from disk when a batch takes them
            name[: -len(".npy")]: np.load(folder / name, allow_pickle=False, mmap_mode="r")
            for name in files
            if name.endswith(".npy")
        }
        ann = json.loads((folder / "annotations.json").read_text())
    except (OSError, ValueError, KeyError) as err:
        warnings.warn(f"{dataset} cache at {folder} is corrupt ({err}); regenerating", stacklevel=3)
        return None
    return arrays, ann


def cached(
    dataset: str,
    params: dict[str, Any],
    cache_dir: str | Path | None,
    generate: Callable[[], tuple[Arrays, dict[str, Any]]],
) -> tuple[Arrays, dict[str, Any], Path]:
    """Read ``dataset`` for ``params`` from the cache, or generate and cache it."""
    folder = cache_folder(dataset, params, cache_dir)
    hit = read_cache(folder, dataset)
    if hit is not None:
        return hit[0], hit[1], folder
    arrays, ann = generate()
    try:
        write_cache(folder, arrays, ann, params)
    except OSError as err:  # a read-only or full cache folder: use the data uncached
        warnings.warn(
            f"cannot write the {dataset} cache at {folder} ({err.strerror or err}); continuing "
            "without it (set ALIGNFUSE_CACHE to a writable folder to keep it)",
            stacklevel=2,
        )
    return arrays, ann, folder
