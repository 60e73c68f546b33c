"""Pairwise similarity scorers that know their polarity (higher = more similar)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str = "a", name_b: str = "b") -> None:
    """Validate two embedding batches: 2-D, same width, floating point, finite, non-empty."""
    for name, x in ((name_a, a), (name_b, b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2:
            raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or Inf")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} differ in width: {a.shape[1]} vs {b.shape[1]}")
    if a.dtype != b.dtype:
        raise ValueError(
            f"{name_a} and {name_b} must share a dtype, got {a.dtype} and {b.dtype} "
            "(cast one, e.g. b.to(a.dtype))"
        )


REDUCTIONS = ("mean", "sum", "none")


def check_similarity(sims: torch.Tensor, reduction: str, loss: str) -> None:
    """Validate a precomputed ``(N, N)`` similarity matrix whose diagonal holds the matched
    pairs: square, floating point, finite, ``N >= 2``, a known ``reduction``."""
    if not isinstance(sims, torch.Tensor):
        raise TypeError(f"sims must be a torch.Tensor, got {type(sims).__name__}")
    if sims.ndim != 2 or sims.shape[0] != sims.shape[1]:
        raise ValueError(f"sims must be a square (N, N) matrix, got {tuple(sims.shape)}")
    if sims.shape[0] < 2:
        raise ValueError(f"{loss} needs a batch of at least 2 pairs (there are no negatives)")
    if not sims.is_floating_point():
        raise ValueError(f"sims must be floating point, got {sims.dtype}")
    if not torch.isfinite(sims).all():
        raise ValueError("sims contains NaN or Inf")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def check_paired_batch(a: torch.Tensor, b: torch.Tensor, reduction: str, loss: str) -> None:
    """Validate the inputs of a pairwise loss over in-batch negatives: :func:`check_pair`, the
    same number of rows, at least two pairs, and a known ``reduction``."""
    check_pair(a, b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a and b must hold the same number of pairs: {a.shape[0]} vs {b.shape[0]}"
        )
    if a.shape[0] < 2:
        raise ValueError(f"{loss} needs a batch of at least 2 pairs (there are no negatives)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def check_nonzero_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> None:
    """Cosine similarity is undefined for a zero row: raise naming the argument."""
    for name, x in (("a", a), ("b", b)):
        if (x.norm(dim=1) <= eps).any():
            raise ValueError(f"{name} has a zero-norm row; cosine similarity is undefined")


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``S[i, j] = <a_i, b_j> / (|a_i| |b_j|)``; zero-norm rows are an error."""
    check_nonzero_rows(a, b, eps)
    return F.normalize(a, dim=1, eps=eps) @ F.normalize(b, dim=1, eps=eps).T


def dot_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``S[i, j] = <a_i, b_j>``."""
    return a @ b.T


def neg_l2_similarity_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``S[i, j] = -||a_i - b_j||_2`` (a distance turned into a similarity: higher = closer)."""
    return -torch.cdist(a, b)


Similarity = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cosine": cosine_similarity_matrix,
    "dot": dot_similarity_matrix,
    "neg_l2": neg_l2_similarity_matrix,
}


def similarity_matrix(
    a: torch.Tensor, b: torch.Tensor, kind: Similarity = "cosine"
) -> torch.Tensor:
    """Similarity of every row of ``a`` with every row of ``b``.

    ``kind`` is ``cosine``, ``dot``, ``neg_l2``, or any callable ``(a, b) -> (N_a, N_b)``
    whose output grows with similarity (a distance must be negated).

    Example:
        >>> a = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
        >>> similarity_matrix(a, a, "neg_l2")[0, 1].item()
        -5.0
    """
    if callable(kind):
        out = kind(a, b)
        if not isinstance(out, torch.Tensor) or out.shape != (a.shape[0], b.shape[0]):
            raise ValueError(
                f"similarity callable must return ({a.shape[0]}, {b.shape[0]}), got "
                f"{getattr(out, 'shape', type(out).__name__)}"
            )
        return out
    try:
        fn = SIMILARITIES[kind]
    except KeyError:
        raise ValueError(
            f"similarity must be one of {sorted(SIMILARITIES)} or a callable, got {kind!r}"
        ) from None
    return fn(a, b)
