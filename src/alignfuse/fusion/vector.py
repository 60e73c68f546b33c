"""Fusion of per-modality vectors (sequences are mean-pooled first): early, late, hybrid,
tensor (TFN), low-rank (LMF), kernel (multiple kernel learning) and graph fusion.

Example:
    >>> import torch
    >>> from alignfuse import create_fusion
    >>> f = create_fusion("tensor", dims={"image": 8, "text": 6}, out_dim=4, hidden=3)
    >>> f({"text": torch.randn(5, 6), "image": torch.randn(5, 8)}).shape
    torch.Size([5, 4])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from alignfuse.fusion._base import Fusion, pool
from alignfuse.registry import FUSION


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


@FUSION.register("early")
class EarlyFusion(Fusion):
    """Early fusion: concatenate the modality vectors, then an MLP."""

    def __init__(self, dims: Mapping[str, int], out_dim: int, hidden: int = 128) -> None:
        super().__init__(dims, out_dim)
        self.net = _mlp(sum(self.dims.values()), hidden, out_dim)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x, mk = self._check(inputs, masks)
        return self.net(torch.cat([pool(x[m], mk[m]) for m in self.modalities], dim=-1))  # type: ignore[no-any-return]


@FUSION.register("late")
class LateFusion(Fusion):
    """Late fusion: a head per modality, outputs combined by fixed or learned weights.

    Missing modalities are allowed: the weights of the present ones are renormalised, so a
    model trained on all modalities still answers from any subset (documented behaviour).
    """

    requires_all = False

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        hidden: int = 128,
        weights: Mapping[str, float] | None = None,
        learn_weights: bool = True,
    ) -> None:
        super().__init__(dims, out_dim)
        self.heads = nn.ModuleDict({m: _mlp(d, hidden, out_dim) for m, d in self.dims.items()})
        w = torch.tensor([float((weights or {}).get(m, 1.0)) for m in self.modalities])
        if (w <= 0).any():
            raise ValueError("late fusion weights must be positive")
        self.log_weights = nn.Parameter(w.log(), requires_grad=learn_weights)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x, mk = self._check(inputs, masks, allow_missing=True)
        present = [i for i, m in enumerate(self.modalities) if m in x]
        w = torch.softmax(self.log_weights[present], dim=0)
        outs = torch.stack(
            [
                self.heads[self.modalities[i]](pool(x[self.modalities[i]], mk[self.modalities[i]]))
                for i in present
            ]
        )
        return (w.to(outs)[:, None, None] * outs).sum(0)


@FUSION.register("hybrid")
class HybridFusion(Fusion):
    """Hybrid fusion: the mean of an early-fusion branch and a late-fusion branch."""

    def __init__(self, dims: Mapping[str, int], out_dim: int, hidden: int = 128) -> None:
        super().__init__(dims, out_dim)
        self.early = EarlyFusion(dims, out_dim, hidden)
        self.late = LateFusion(dims, out_dim, hidden)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        self._check(inputs, masks)
        out: torch.Tensor = 0.5 * (self.early(inputs, masks) + self.late(inputs, masks))
        return out


@FUSION.register("tensor")
class TensorFusion(Fusion):
    """Tensor fusion (TFN, Zadeh et al. 2017): project each modality to ``hidden``, append a
    1, take the outer product of all of them (unimodal, bimodal and trimodal terms) and map
    the flattened tensor to ``out_dim`` with one linear layer."""

    def __init__(self, dims: Mapping[str, int], out_dim: int, hidden: int = 16) -> None:
        super().__init__(dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.dims.items()})
        self.hidden = hidden
        self.out = nn.Linear((hidden + 1) ** len(self.dims), out_dim)

    def fused_tensor(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The flattened outer product ``(B, (hidden + 1)^M)``."""
        x, mk = self._check(inputs, masks)
        z = None
        for m in self.modalities:
            h = self.proj[m](pool(x[m], mk[m]))
            h = torch.cat((h, torch.ones_like(h[:, :1])), dim=1)
            z = h if z is None else (z[:, :, None] * h[:, None, :]).flatten(1)
        assert z is not None
        return z

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.out(self.fused_tensor(inputs, masks))  # type: ignore[no-any-return]


@FUSION.register("low_rank")
class LowRankFusion(Fusion):
    """Low-rank multimodal fusion (LMF, Liu et al. 2018): the TFN weight factorised into
    ``rank`` modality-specific factors, ``out = sum_r prod_m (W_m^r [h_m; 1]) + b``, without
    forming the outer product. ``factors[m]`` has shape ``(rank, hidden + 1, out_dim)``."""

    def __init__(
        self, dims: Mapping[str, int], out_dim: int, hidden: int = 16, rank: int = 4
    ) -> None:
        super().__init__(dims, out_dim)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.dims.items()})
        self.factors = nn.ParameterDict(
            {
                m: nn.Parameter(torch.randn(rank, hidden + 1, out_dim) * (hidden + 1) ** -0.5)
                for m in self.dims
            }
        )
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.rank = rank

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x, mk = self._check(inputs, masks)
        prod = None
        for m in self.modalities:
            h = self.proj[m](pool(x[m], mk[m]))
            h = torch.cat((h, torch.ones_like(h[:, :1])), dim=1)
            term = torch.einsum("bh,rho->rbo", h, self.factors[m])
            prod = term if prod is None else prod * term
        assert prod is not None
        return prod.sum(0) + self.bias


@FUSION.register("kernel")
class KernelFusion(Fusion):
    """Kernel-based fusion (multiple kernel learning): each modality's RBF kernel against
    learned anchor points, kernels combined with learned non-negative weights (softmax), then
    a linear read-out. ``kernel_weights()`` reports the learned weight of each modality."""

    def __init__(
        self, dims: Mapping[str, int], out_dim: int, n_anchors: int = 32, hidden: int = 32
    ) -> None:
        super().__init__(dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.dims.items()})
        self.anchors = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(n_anchors, hidden)) for m in self.dims}
        )
        self.log_gamma = nn.ParameterDict({m: nn.Parameter(torch.tensor(-2.0)) for m in self.dims})
        self.mix = nn.Parameter(torch.zeros(len(self.dims)))
        self.out = nn.Linear(n_anchors, out_dim)

    def kernel_weights(self) -> dict[str, float]:
        """The learned weight of each modality's kernel (a distribution)."""
        w = torch.softmax(self.mix.detach(), 0)
        return {m: float(w[i]) for i, m in enumerate(self.modalities)}

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x, mk = self._check(inputs, masks)
        w = torch.softmax(self.mix, 0)
        k: torch.Tensor | float = 0.0
        for i, m in enumerate(self.modalities):
            h = self.proj[m](pool(x[m], mk[m]))
            d2 = torch.cdist(h, self.anchors[m].to(h)).pow(2)
            k = k + w[i] * torch.exp(-self.log_gamma[m].exp() * d2)
        return self.out(k)  # type: ignore[no-any-return]


@FUSION.register("graph")
class GraphFusion(Fusion):
    """Graph-based fusion: a node per modality and per pair of modalities (initialised from
    its two members), edges between each pair node and its members, ``rounds`` of message
    passing (mean of neighbours, MLP update), read out by the mean over all nodes."""

    def __init__(
        self, dims: Mapping[str, int], out_dim: int, hidden: int = 64, rounds: int = 2
    ) -> None:
        super().__init__(dims, out_dim)
        self.proj = nn.ModuleDict({m: nn.Linear(d, hidden) for m, d in self.dims.items()})
        n = len(self.dims)
        self.pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        self.pair_init = nn.Linear(2 * hidden, hidden)
        adj = torch.eye(n + len(self.pairs))
        for p, (i, j) in enumerate(self.pairs):
            for u in (i, j):
                adj[n + p, u] = adj[u, n + p] = 1.0
        self.register_buffer("adj", adj / adj.sum(1, keepdim=True))
        self.updates = nn.ModuleList(_mlp(2 * hidden, hidden, hidden) for _ in range(rounds))
        self.out = nn.Linear(hidden, out_dim)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x, mk = self._check(inputs, masks)
        uni = [self.proj[m](pool(x[m], mk[m])) for m in self.modalities]
        pair = [torch.tanh(self.pair_init(torch.cat((uni[i], uni[j]), -1))) for i, j in self.pairs]
        h = torch.stack(uni + pair, dim=1)  # (B, nodes, hidden)
        adj: torch.Tensor = self.adj  # type: ignore[assignment]
        for upd in self.updates:
            msg = adj.to(h) @ h
            h = h + upd(torch.cat((h, msg), -1))
        return self.out(h.mean(1))  # type: ignore[no-any-return]
