"""Top-k search by inner product that scales: exact and chunked by default, FAISS when asked.

``topk(queries, keys, k)`` never holds the full ``(N_queries, N_keys)`` score matrix: it
scores ``chunk`` queries at a time (``chunk`` chosen to keep one block within ``memory_mb``)
and keeps their ``k`` best keys, so 100,000 x 100,000 runs in a few hundred MB.
``backend="faiss"`` uses an exact FAISS ``IndexFlatIP`` (the ``search`` extra, ``faiss-cpu``);
both give the same indices wherever scores are not tied. For cosine similarity, normalise
both sides first.

:func:`recall_at_k` turns the indices into retrieval recall when several keys belong to one
query (captions of an image).

Example:
    >>> import torch
    >>> keys = torch.eye(4)
    >>> scores, idx = topk(torch.tensor([[0.1, 0.9, 0.0, 0.3]]), keys, k=2)
    >>> idx.tolist()
    [[1, 3]]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

BACKENDS = ("exact", "faiss", "auto")


def faiss_available() -> bool:
    """Whether ``faiss`` (``pip install 'alignfuse[search]'``) imports."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _matrix(x: Any, name: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (n, dim) matrix, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t.detach()


def topk(
    queries: Any,
    keys: Any,
    k: int,
    backend: str = "exact",
    chunk: int | None = None,
    memory_mb: float = 256.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` keys of highest inner product with each query, best first.

    Args:
        queries: ``(Q, D)`` tensor or array.
        keys: ``(N, D)`` on the same device as ``queries``.
        k: how many keys per query (``1 <= k <= N``).
        backend: ``"exact"`` (chunked matmul + ``torch.topk``, on the inputs' device),
            ``"faiss"`` (exact flat index, CPU), ``"auto"`` (FAISS if installed and the inputs
            are on the CPU, else exact).
        chunk: queries scored per block (default: as many as fit in ``memory_mb``).
        memory_mb: the budget of one block of scores when ``chunk`` is not given.

    Returns:
        ``(scores, indices)``, both ``(Q, k)``; scores in the queries' dtype (float32 for FAISS).
    """
    q, x = _matrix(queries, "queries"), _matrix(keys, "keys")
    if q.shape[1] != x.shape[1]:
        raise ValueError(f"queries and keys must share their dim: {q.shape[1]} vs {x.shape[1]}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be an integer in [1, {x.shape[0]}], got {k!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    if backend == "auto":
        backend = "faiss" if faiss_available() and q.device.type == "cpu" else "exact"
    if backend == "faiss":
        return _faiss_topk(q, x, k)
    if q.device != x.device:
        raise ValueError(f"queries and keys must be on one device: {q.device} vs {x.device}")
    x = x.to(q.dtype)
    if chunk is None:
        per_row = x.shape[0] * q.element_size()
        chunk = max(1, int(memory_mb * 2**20 // per_row))
    scores, indices = [], []
    for i in range(0, q.shape[0], chunk):
        s = q[i : i + chunk] @ x.T
        top = s.topk(k, dim=1)
        scores.append(top.values)
        indices.append(top.indices)
    return torch.cat(scores), torch.cat(indices)


def _faiss_topk(q: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import faiss
    except ImportError:
        raise ImportError(
            "backend='faiss' needs faiss-cpu: pip install 'alignfuse[search]'"
        ) from None
    xs = np.ascontiguousarray(x.float().cpu().numpy())
    qs = np.ascontiguousarray(q.float().cpu().numpy())
    index = faiss.IndexFlatIP(xs.shape[1])
    index.add(xs)
    scores, idx = index.search(qs, k)
    return (
        torch.from_numpy(scores).to(q.device),
        torch.from_numpy(idx.astype(np.int64)).to(q.device),
    )


def recall_at_k(
    indices: torch.Tensor, query_ids: Any, key_ids: Any, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@K from top-k ``indices (Q, k)``: the share of queries with a key of the same
    id (``query_ids[q] == key_ids[indices[q, j]]``) among their first K."""
    qi = torch.as_tensor(np.asarray(query_ids)).to(indices.device).long()
    ki = torch.as_tensor(np.asarray(key_ids)).to(indices.device).long()
    if qi.shape != (indices.shape[0],):
        raise ValueError(f"query_ids must have shape ({indices.shape[0]},), got {tuple(qi.shape)}")
    if int(indices.max()) >= ki.shape[0]:
        raise ValueError(f"indices point past the {ki.shape[0]} key_ids")
    hit = ki[indices] == qi[:, None]
    out = {}
    for kk in ks:
        if kk > indices.shape[1]:
            raise ValueError(f"recall@{kk} needs top-{kk} indices, got top-{indices.shape[1]}")
        out[f"r{kk}"] = float(hit[:, :kk].any(1).double().mean())
    return out
