"""Learnable graph matching: message passing over each side's graph, cross-graph attention,
then a Sinkhorn matching layer (as in deep graph matching and SuperGlue).

:func:`~alignfuse.transport.sinkhorn_layer` is the differentiable, unrolled log-domain
Sinkhorn normalisation of a score matrix; :class:`GraphMatcher` embeds the nodes of two graphs (e.g. the frames of a
clip as a chain and its clauses as a chain), lets messages flow inside each graph and across
the two, and returns the log of a soft assignment of every left node to the right nodes.

Example:
    >>> import torch
    >>> m = GraphMatcher(dim=8)
    >>> left, right = torch.randn(12, 8), torch.randn(3, 8)
    >>> logp = m(left, right, chain_adjacency(12), chain_adjacency(3))
    >>> logp.shape, bool(torch.allclose(logp.exp().sum(1), torch.ones(12), atol=1e-5))
    (torch.Size([12, 3]), True)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from alignfuse.transport.sinkhorn import sinkhorn_layer


def chain_adjacency(n: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Row-normalised adjacency ``(n, n)`` of a chain (each node linked to its neighbours)."""
    if n < 1:
        raise ValueError(f"a chain needs at least one node, got n={n}")
    a = torch.zeros(n, n, device=device)
    idx = torch.arange(n - 1, device=device)
    a[idx, idx + 1] = 1.0
    a[idx + 1, idx] = 1.0
    return a / a.sum(1, keepdim=True).clamp_min(1.0)


class _Round(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.intra = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.cross = nn.MultiheadAttention(hidden, 4, batch_first=True)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor, adj: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        h = self.norm1(h + self.intra(torch.cat((h, adj @ h), dim=-1)))
        att, _ = self.cross(h[None], other[None], other[None], need_weights=False)
        out: torch.Tensor = self.norm2(h + att[0])
        return out


class GraphMatcher(nn.Module):
    """Match the nodes of a left graph to those of a right graph.

    Node inputs are features ``(n, dim)`` / ``(m, dim)`` plus each node's relative position in
    its sequence (``i / (n - 1)``), so an ordering prior can be learned. Each of ``rounds``
    rounds passes messages along each graph's adjacency, then attends across the graphs.
    Scores are scaled dot products; :func:`sinkhorn_layer` turns them into an assignment whose
    rows sum to one, returned as log-probabilities ``(n, m)``.
    """

    def __init__(
        self, dim: int, hidden: int = 64, rounds: int = 2, sinkhorn_iters: int = 20
    ) -> None:
        super().__init__()
        if dim < 1 or hidden < 4 or hidden % 4 or rounds < 0 or sinkhorn_iters < 1:
            raise ValueError(
                "GraphMatcher needs dim >= 1, hidden a positive multiple of 4, rounds >= 0 and "
                f"sinkhorn_iters >= 1; got dim={dim}, hidden={hidden}, rounds={rounds}, "
                f"sinkhorn_iters={sinkhorn_iters}"
            )
        self.dim = dim
        self.left_in = nn.Linear(dim + 1, hidden)
        self.right_in = nn.Linear(dim + 1, hidden)
        self.left_rounds = nn.ModuleList(_Round(hidden) for _ in range(rounds))
        self.right_rounds = nn.ModuleList(_Round(hidden) for _ in range(rounds))
        self.scale = nn.Parameter(torch.tensor(math.log(1.0 / math.sqrt(hidden))))
        self.sinkhorn_iters = sinkhorn_iters

    @staticmethod
    def _with_position(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        pos = torch.arange(n, dtype=x.dtype, device=x.device) / max(n - 1, 1)
        return torch.cat((x, pos[:, None]), dim=1)

    def forward(
        self,
        left: torch.Tensor,
        right: torch.Tensor,
        left_adj: torch.Tensor,
        right_adj: torch.Tensor,
    ) -> torch.Tensor:
        for name, x, adj in (("left", left, left_adj), ("right", right, right_adj)):
            if x.ndim != 2 or x.shape[1] != self.dim or x.shape[0] == 0:
                raise ValueError(
                    f"{name} must be (n, {self.dim}) with n >= 1, got {tuple(x.shape)}"
                )
            if tuple(adj.shape) != (x.shape[0], x.shape[0]):
                raise ValueError(
                    f"{name}_adj must be ({x.shape[0]}, {x.shape[0]}), got {tuple(adj.shape)}"
                )
        hl = self.left_in(self._with_position(left))
        hr = self.right_in(self._with_position(right))
        for rl, rr in zip(self.left_rounds, self.right_rounds, strict=True):
            hl, hr = rl(hl, left_adj.to(hl), hr), rr(hr, right_adj.to(hr), hl)
        scores = (hl @ hr.T) * self.scale.exp()
        logp = sinkhorn_layer(scores, n_iters=self.sinkhorn_iters)
        return torch.log_softmax(logp, dim=1)
