"""Optimal transport between sets: entropic Sinkhorn (balanced and unbalanced, log domain),
the Sinkhorn divergence, entropic (fused) Gromov-Wasserstein, and exact OT by proximal point
steps (IPOT) with UNITER's word-region alignment on top.

Everything is batched torch on the input's device. Inputs: weights ``a`` ``(n,)`` / ``(B, n)``
(``None`` for uniform), ``b`` likewise, and a cost ``(n, m)`` / ``(B, n, m)``. Every solver
returns a :class:`TransportResult` and warns (:class:`alignfuse.errors.ConvergenceWarning`)
when it stops at ``max_iter`` before reaching ``tol``.

Example:
    >>> import torch
    >>> from alignfuse.transport import sinkhorn
    >>> cost = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    >>> res = sinkhorn(None, None, cost, reg=0.01)
    >>> res.plan.round(decimals=3)
    tensor([[0.5000, 0.0000],
            [0.0000, 0.5000]])
    >>> bool(res.converged)
    True
"""

from alignfuse.transport.gromov import (
    entropic_fused_gromov_wasserstein,
    entropic_gromov_wasserstein,
)
from alignfuse.transport.ipot import (
    IPOTResult,
    ipot,
    word_region_alignment_loss,
    word_region_distance,
)
from alignfuse.transport.sinkhorn import (
    TransportResult,
    sinkhorn,
    sinkhorn_divergence,
    sinkhorn_layer,
)

__all__ = [
    "IPOTResult",
    "TransportResult",
    "entropic_fused_gromov_wasserstein",
    "entropic_gromov_wasserstein",
    "ipot",
    "sinkhorn",
    "sinkhorn_divergence",
    "sinkhorn_layer",
    "word_region_alignment_loss",
    "word_region_distance",
]
