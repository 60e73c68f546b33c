"""Contrastive losses across processes (torchrun / DDP).

Each rank holds a slice of the global batch. :func:`all_gather_with_grad` returns the global
batch on every rank, with this rank's slice still attached to its autograd graph (the other
slices are constants here: their gradients are computed on their own ranks). A loss on the
gathered embeddings is then the full-batch loss on every rank, and the gradient reaching
this rank's embeddings is exactly the full-batch gradient of those rows. DDP averages
parameter gradients over ranks, so to reproduce the single-process gradient of the loss,
scale the loss by the world size (:func:`world_size`) before ``backward``.

Example (under ``torchrun --nproc_per_node 2``)::

    a, b = model(images, text)                        # this rank's slice
    loss = info_nce(all_gather_with_grad(a), all_gather_with_grad(b))
    (loss * world_size()).backward()
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping this rank's autograd graph.

    Every rank must pass a tensor of the same shape. A no-op in a single process.
    """
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def init_from_env(device: str = "auto") -> int:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``) and return this rank; a no-op
    returning 0 for a single process or when already initialised. NCCL on CUDA (each
    process on GPU ``LOCAL_RANK``), gloo on the CPU."""
    if dist.is_initialized():
        return int(dist.get_rank())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return int(dist.get_rank())
