"""Device-resident DTW / soft-DTW in torch: the recursion runs one anti-diagonal at a time.

Cells ``(i, j)`` with ``i + j = k`` depend only on diagonals ``k - 1`` and ``k - 2``, so each
diagonal is one vectorised step over the whole batch. This path stays on the input's device
(CUDA included) and is differentiated by autograd; memory is ``O(B (n + m) n)``.
"""

from __future__ import annotations

import torch


def _big(dtype: torch.dtype) -> float:
    # a finite stand-in for +inf: keeps logsumexp's backward free of inf - inf
    return 1e30 if dtype == torch.float32 else 1e250


def wavefront(
    cost: torch.Tensor,
    xl: torch.Tensor,
    yl: torch.Tensor,
    gamma: float,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """DTW (``gamma == 0``) or soft-DTW values of a batch of cost matrices ``(B, n, m)``.

    ``xl`` / ``yl`` are the valid lengths; ``allowed`` an optional ``(B, n, m)`` boolean mask
    of admissible cells. Pairs without an admissible path get ``inf``.
    """
    b, n, m = cost.shape
    dev, dtype = cost.device, cost.dtype
    big = _big(dtype)
    if allowed is not None:
        cost = cost.masked_fill(~allowed, big)
    # skew: diagonal k (k = i + j, 0-based cells) as a row indexed by i
    ks = torch.arange(n + m - 1, device=dev)[:, None]
    ii = torch.arange(n, device=dev)[None, :]
    jj = ks - ii
    valid = (jj >= 0) & (jj < m)
    flat = (ii * m + jj.clamp(0, m - 1)).reshape(-1)
    skew = cost.reshape(b, n * m)[:, flat].reshape(b, n + m - 1, n)
    skew = skew.masked_fill(~valid[None], big)

    # diagonals of the accumulated matrix R (1-based, R[0, 0] = 0), indexed by i = 0..n
    first = torch.full((b, n + 1), big, dtype=dtype, device=dev)
    d2 = first.clone()
    d2[:, 0] = 0.0  # R diagonal 0: R[0, 0]
    d1 = first.clone()  # R diagonal 1: R[0, 1], R[1, 0]
    pad = first[:, :1]
    diags = []
    for k in range(n + m - 1):
        a, bb, c = d2[:, :-1], d1[:, :-1], d1[:, 1:]
        if gamma > 0:
            stacked = torch.stack((a, bb, c), dim=-1)
            soft = -gamma * torch.logsumexp(-stacked / gamma, dim=-1)
        else:
            soft = torch.minimum(torch.minimum(a, bb), c)
        new = torch.cat((pad, (skew[:, k] + soft).clamp(max=big)), dim=1)
        diags.append(new)
        d2, d1 = d1, new
    allr = torch.stack(diags, dim=1)  # (B, n + m - 1, n + 1); R diagonal k + 2
    k_end = (xl + yl - 2).to(dev)
    out = allr[torch.arange(b, device=dev), k_end, xl.to(dev)]
    return torch.where(out >= big / 2, torch.full_like(out, float("inf")), out)
