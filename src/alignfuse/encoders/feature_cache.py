"""A cache of a frozen tower's outputs: computed once per image, kept in memory and on disk.

A tower whose first part is frozen (a pretrained image tower, frozen whole or up to its last
trainable blocks) computes the same output for the same input every time. :class:`PrefixCache`
keys that output by a digest of the input tensor's bytes, so nothing upstream changes:
batches that hit the cache skip the frozen part; any other input (an augmented image, a new
split) is computed live and stays correct.

On disk, one safetensors file per (tower, data) pair: its name is a hash of the tower's
fingerprint (architecture, weights of the frozen part, preprocessing, split point) and of the
inputs' digests; its metadata repeats the fingerprint and is checked on read; a file that
does not match or does not load is recomputed (with a warning), and writes are atomic.

Example:
    >>> import torch
    >>> cache = PrefixCache()
    >>> x = torch.randn(4, 3, 8, 8)
    >>> cache.fill(lambda b: b.mean((2, 3)), x, batch_size=2)  # computed rows
    4
    >>> torch.equal(cache.lookup(x[1:3]), x[1:3].mean((2, 3)))
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

Digest = bytes


def digest(row: torch.Tensor) -> Digest:
    """A 16-byte digest (truncated SHA-256: twice BLAKE2b's speed on CPUs with SHA
    instructions) of one input's dtype, shape and bytes."""
    t = row.detach().contiguous().cpu()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update((t.view(torch.uint8) if t.dtype == torch.bfloat16 else t).numpy().data)
    return h.digest()[:16]


def digests(inputs: torch.Tensor) -> list[Digest]:
    """:func:`digest` of every row of ``inputs``."""
    return [digest(row) for row in inputs]


def state_fingerprint(params: Iterable[torch.Tensor]) -> str:
    """A SHA-256 of tensors' values (the frozen weights a cached output depends on)."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


class PrefixCache:
    """Outputs of a fixed function, keyed by the digest of each input row."""

    def __init__(self) -> None:
        self.store: dict[Digest, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.store)

    def lookup(self, inputs: torch.Tensor, keys: list[Digest] | None = None) -> torch.Tensor | None:
        """The cached outputs of every row of ``inputs`` (on its device), or ``None`` when
        any row is missing. ``keys``: the rows' digests, when already computed."""
        if not self.store:
            return None
        rows = []
        for i, row in enumerate(inputs):
            hit = self.store.get(digest(row) if keys is None else keys[i])
            if hit is None:
                return None
            rows.append(hit)
        return torch.stack(rows).to(inputs.device)

    def fill(
        self,
        fn: Callable[[torch.Tensor], torch.Tensor],
        inputs: torch.Tensor | Iterable[torch.Tensor],
        batch_size: int = 64,
        progress: bool = False,
        desc: str = "features",
        total: int | None = None,
    ) -> int:
        """Compute ``fn`` on the rows not yet cached (``inputs`` is a tensor or an iterable of
        batches); return how many were computed. ``progress``: a bar; without one, a plain
        line every 30 s."""
        from alignfuse._progress import Progress

        batches = (
            [inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)]
            if isinstance(inputs, torch.Tensor)
            else inputs
        )
        done = 0
        if isinstance(inputs, torch.Tensor):
            total = len(inputs)
        bar = Progress(total, desc, "img", bar=progress)
        for batch in batches:
            keys = [digest(row) for row in batch]
            todo = [i for i, k in enumerate(keys) if k not in self.store]
            if todo:
                with torch.inference_mode():
                    out = fn(batch[todo]).float().cpu()
                for i, row in zip(todo, out, strict=True):
                    self.store[keys[i]] = row.clone()
                done += len(todo)
            bar.update(len(batch))
        bar.close()
        return done

    def data_fingerprint(self) -> str:
        """A hash of the cached inputs' digests (their set, in sorted order)."""
        h = hashlib.sha256()
        for k in sorted(self.store):
            h.update(k)
        return h.hexdigest()

    def path(self, folder: str | Path, tower: str, keys: Iterable[Digest]) -> Path:
        """The file that holds ``tower``'s outputs for the inputs ``keys``."""
        h = hashlib.sha256(tower.encode())
        for k in sorted(keys):
            h.update(k)
        return Path(folder) / f"{h.hexdigest()[:24]}.safetensors"

    def save(self, file: str | Path, tower: str) -> None:
        """Write every cached output to ``file`` (atomically), stamped with ``tower``."""
        from safetensors.torch import save_file

        file = Path(file)
        file.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k.hex(): v.contiguous() for k, v in self.store.items()}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=file.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"tower": tower, "count": str(len(tensors))})
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def load(self, file: str | Path, tower: str, keys: Iterable[Digest]) -> bool:
        """Add the outputs stored in ``file`` if it was written for ``tower`` and holds every
        one of ``keys``; return whether it did (a stale or corrupt file warns)."""
        from safetensors import safe_open

        file = Path(file)
        if not file.is_file():
            return False
        wanted = {k.hex() for k in keys}
        try:
            with safe_open(str(file), framework="pt") as f:  # type: ignore[no-untyped-call]
                meta = f.metadata() or {}
                if meta.get("tower") != tower or not wanted <= set(f.keys()):
                    raise ValueError("written for another tower or other inputs")
                loaded = {k: f.get_tensor(k) for k in wanted}
        except Exception as err:  # any unreadable file is recomputed
            warnings.warn(
                f"feature cache {str(file)!r} is stale or corrupt ({err}); recomputing",
                stacklevel=2,
            )
            return False
        for k, v in loaded.items():
            self.store[bytes.fromhex(k)] = v
        return True


def tower_id(**parts: object) -> str:
    """A canonical string naming a tower configuration (for cache stamps)."""
    return json.dumps(parts, sort_keys=True)
