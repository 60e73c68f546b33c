"""Memory-efficient InfoNCE and sigmoid losses: exact values and gradients computed over row
chunks of the similarity matrix, so peak memory grows with ``N x chunk``, not ``N^2``.

Forward makes one pass over row chunks: each chunk's row log-sum-exp is complete within the
chunk, and the column log-sum-exp is accumulated online (running maximum and rescaled sum),
as in streaming softmax. Backward recomputes each chunk's logits and forms the gradient
``G`` of the loss with respect to the logits in closed form:

* InfoNCE: ``G_ij = (softmax_row(l)_ij + softmax_col(l)_ij - 2 delta_ij) / (2N)``;
* sigmoid: ``G_ij = -z_ij sigmoid(-z_ij l_ij) / N``;

then ``dA = s G B``, ``dB = s G^T A``, ``ds = sum(G * A B^T)`` (and ``d bias = sum(G)``), chunk by
chunk. Inputs are L2-normalised before the custom function, so autograd handles the norm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from alignfuse.similarity import check_nonzero_rows


def _rows(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


class _ChunkedInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor, chunk: int
    ) -> torch.Tensor:
        n = a.shape[0]
        lse_r = torch.empty(n, dtype=a.dtype, device=a.device)
        col_max = torch.full((n,), float("-inf"), dtype=a.dtype, device=a.device)
        col_sum = torch.zeros(n, dtype=a.dtype, device=a.device)
        for s, e in _rows(n, chunk):
            logits = (a[s:e] @ b.T) * scale
            lse_r[s:e] = torch.logsumexp(logits, 1)
            new_max = torch.maximum(col_max, logits.max(0).values)
            col_sum = col_sum * torch.exp(col_max - new_max) + torch.exp(logits - new_max).sum(0)
            col_max = new_max
        lse_c = col_max + torch.log(col_sum)
        diag = scale * (a * b).sum(1)
        ctx.save_for_backward(a, b, scale, lse_r, lse_c)
        ctx.chunk = chunk
        return 0.5 * ((lse_r - diag).mean() + (lse_c - diag).mean())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        a, b, scale, lse_r, lse_c = ctx.saved_tensors
        n = a.shape[0]
        ga, gb = torch.zeros_like(a), torch.zeros_like(b)
        gs = torch.zeros((), dtype=a.dtype, device=a.device)
        for s, e in _rows(n, ctx.chunk):
            raw = a[s:e] @ b.T
            logits = raw * scale
            g = (torch.exp(logits - lse_r[s:e, None]) + torch.exp(logits - lse_c[None, :])) / (
                2 * n
            )
            idx = torch.arange(s, e, device=a.device)
            g[idx - s, idx] -= 1.0 / n
            ga[s:e] = (g @ b) * scale
            gb += (g.T @ a[s:e]) * scale
            gs += (g * raw).sum()
        return grad * ga, grad * gb, (grad * gs).reshape(scale.shape), None


class _ChunkedSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        a: torch.Tensor,
        b: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        n = a.shape[0]
        total = torch.zeros((), dtype=a.dtype, device=a.device)
        for s, e in _rows(n, chunk):
            logits = (a[s:e] @ b.T) * scale + bias
            z = -torch.ones_like(logits)
            idx = torch.arange(s, e, device=a.device)
            z[idx - s, idx] = 1.0
            total = total - F.logsigmoid(z * logits).sum()
        ctx.save_for_backward(a, b, scale, bias)
        ctx.chunk = chunk
        return total / n

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        a, b, scale, bias = ctx.saved_tensors
        n = a.shape[0]
        ga, gb = torch.zeros_like(a), torch.zeros_like(b)
        gs = torch.zeros((), dtype=a.dtype, device=a.device)
        gbias = torch.zeros((), dtype=a.dtype, device=a.device)
        for s, e in _rows(n, ctx.chunk):
            raw = a[s:e] @ b.T
            logits = raw * scale + bias
            z = -torch.ones_like(logits)
            idx = torch.arange(s, e, device=a.device)
            z[idx - s, idx] = 1.0
            g = -z * torch.sigmoid(-z * logits) / n
            ga[s:e] = (g @ b) * scale
            gb += (g.T @ a[s:e]) * scale
            gs += (g * raw).sum()
            gbias += g.sum()
        return (
            grad * ga,
            grad * gb,
            (grad * gs).reshape(scale.shape),
            (grad * gbias).reshape(bias.shape),
            None,
        )


def check_chunked_call(
    a: torch.Tensor, b: torch.Tensor, extra_positives: bool, reduction: str, similarity: object
) -> bool:
    """Validate a ``chunk_size`` call of a pairwise loss; return whether to L2-normalise."""
    if extra_positives:
        raise ValueError("chunk_size supports one positive per row and no label smoothing")
    if reduction == "none":
        raise ValueError("chunk_size gives the 'mean' or 'sum' reduction, not 'none'")
    if similarity not in ("cosine", "dot"):
        raise ValueError("chunk_size supports similarity 'cosine' or 'dot'")
    if similarity == "cosine":
        check_nonzero_rows(a, b)
    return similarity == "cosine"


def _as_tensor(x: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return (
        x
        if isinstance(x, torch.Tensor)
        else torch.tensor(float(x), dtype=like.dtype, device=like.device)
    )


def chunked_info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    chunk_size: int = 4096,
    normalize: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE (mean over pairs) in ``chunk_size`` row chunks; equals
    :func:`alignfuse.losses.info_nce` in value and gradient.

    Example:
        >>> from alignfuse.losses import info_nce
        >>> a, b = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
        >>> bool(torch.allclose(chunked_info_nce(a, b, 1.0, chunk_size=3), info_nce(a, b, 1.0)))
        True
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    scale = _as_tensor(logit_scale, a).exp()
    out: torch.Tensor = _ChunkedInfoNCE.apply(a, b, scale, chunk_size)  # type: ignore[no-untyped-call]
    return out


def chunked_sigmoid(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    chunk_size: int = 4096,
    normalize: bool = True,
) -> torch.Tensor:
    """SigLIP's sigmoid loss (``mean`` reduction: sum over pairs / N) in row chunks; equals
    :func:`alignfuse.losses.sigmoid_loss` in value and gradient."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    scale = _as_tensor(logit_scale, a).exp()
    out: torch.Tensor = _ChunkedSigmoid.apply(  # type: ignore[no-untyped-call]
        a, b, scale, _as_tensor(logit_bias, a), chunk_size
    )
    return out
