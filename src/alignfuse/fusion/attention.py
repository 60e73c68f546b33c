"""Attention-based fusion of token sequences (vectors count as one-token sequences):
co-attention (ViLBERT), merged single-stream attention (ViLT / UNITER), gated attention
fusion, multiway transformer (VLMo / BEiT-3), attention bottlenecks (MBT), Q-Former (BLIP-2),
FiLM and stacked attention (SAN).

Every module first projects each modality to a common ``width``.

Example:
    >>> import torch
    >>> from alignfuse import create_fusion
    >>> f = create_fusion("qformer", dims={"image": 12}, out_dim=5, width=16, n_queries=4)
    >>> f({"image": torch.randn(2, 30, 12)}).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from alignfuse.fusion._base import Fusion, as_sequence, pool
from alignfuse.layers import QFormerLayer
from alignfuse.registry import FUSION


def _check_width(width: int, heads: int) -> None:
    if width < 1 or heads < 1 or width % heads:
        raise ValueError(f"width ({width}) must be a positive multiple of heads ({heads})")


class _Projected(Fusion):
    """Projects every modality to ``width`` tokens and returns sequences with masks."""

    def __init__(self, dims: Mapping[str, int], out_dim: int, width: int, heads: int) -> None:
        super().__init__(dims, out_dim)
        _check_width(width, heads)
        self.width, self.heads = width, heads
        self.proj = nn.ModuleDict({m: nn.Linear(d, width) for m, d in self.dims.items()})

    def _two_roles(self, what: str, role: str, chosen: str | None, default: int) -> tuple[str, str]:
        """For two-modality fusions: the modality playing ``role`` (default: the one at index
        ``default``) and the other one."""
        if len(self.dims) != 2:
            raise ValueError(f"{what} fuses exactly two modalities, got {list(self.dims)}")
        first = chosen or self.modalities[default]
        if first not in self.dims:
            raise ValueError(f"{role} must be one of {list(self.dims)}, got {first!r}")
        return first, next(m for m in self.modalities if m != first)

    def _tokens(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        x, mk = self._check(inputs, masks)
        out = {}
        for m in self.modalities:
            seq, mask = as_sequence(x[m], mk[m])
            out[m] = (self.proj[m](seq), mask)
        return out


def _ffn(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))


class _CoLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.att_a = nn.MultiheadAttention(width, heads, batch_first=True)
        self.att_b = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ffn_a, self.ffn_b = _ffn(width), _ffn(width)
        self.n = nn.ModuleList(nn.LayerNorm(width) for _ in range(4))

    def forward(
        self, a: torch.Tensor, ma: torch.Tensor, b: torch.Tensor, mb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        a2 = self.n[0](a + self.att_a(a, b, b, key_padding_mask=~mb, need_weights=False)[0])
        b2 = self.n[1](b + self.att_b(b, a, a, key_padding_mask=~ma, need_weights=False)[0])
        return self.n[2](a2 + self.ffn_a(a2)), self.n[3](b2 + self.ffn_b(b2))


@FUSION.register("co_attention")
class CoAttentionFusion(_Projected):
    """Cross-attention in both directions (ViLBERT's co-attention): in every layer each of the
    two modalities attends to the other; the pooled outputs are concatenated and read out."""

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
    ) -> None:
        super().__init__(dims, out_dim, width, heads)
        self._two_roles("co_attention", "first", None, 0)
        self.layers = nn.ModuleList(_CoLayer(width, heads) for _ in range(layers))
        self.out = nn.Linear(2 * width, out_dim)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        t = self._tokens(inputs, masks)
        (a, ma), (b, mb) = (t[m] for m in self.modalities)
        for layer in self.layers:
            a, b = layer(a, ma, b, mb)
        return self.out(torch.cat((pool(a, ma), pool(b, mb)), -1))  # type: ignore[no-any-return]


@FUSION.register("single_stream")
class SingleStreamFusion(_Projected):
    """Merged attention (ViLT, UNITER): the tokens of every modality, each with a learned
    modality-type embedding and position embedding, and a [CLS] token go through one
    Transformer encoder; the [CLS] output is read out."""

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
        max_len: int = 512,
    ) -> None:
        super().__init__(dims, out_dim, width, heads)
        self.type_emb = nn.Parameter(torch.randn(len(self.dims), width) * 0.02)
        self.pos_emb = nn.Parameter(torch.randn(max_len, width) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(width, out_dim)
        self.max_len = max_len

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        t = self._tokens(inputs, masks)
        seqs, ms = [], []
        for i, m in enumerate(self.modalities):
            x, mask = t[m]
            if x.shape[1] > self.max_len:
                raise ValueError(
                    f"modality {m!r} has {x.shape[1]} tokens, more than max_len={self.max_len}"
                )
            seqs.append(x + self.type_emb[i] + self.pos_emb[: x.shape[1]])
            ms.append(mask)
        b = seqs[0].shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1), *seqs], 1)
        mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), *ms], 1)
        return self.out(self.encoder(x, src_key_padding_mask=~mask)[:, 0])  # type: ignore[no-any-return]


@FUSION.register("gated")
class GatedFusion(_Projected):
    """Gated attention fusion (gate-and-add, Zhang et al. 2020, "Neural Machine Translation
    with Universal Visual Representation"): the ``primary`` modality's tokens attend to the
    other's, ``H + sigmoid(W [H; A]) * A``, pooled and read out."""

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        width: int = 64,
        heads: int = 4,
        primary: str | None = None,
    ) -> None:
        super().__init__(dims, out_dim, width, heads)
        self.primary, self.other = self._two_roles("gated fusion", "primary", primary, 0)
        self.att = nn.MultiheadAttention(width, heads, batch_first=True)
        self.gate = nn.Linear(2 * width, width)
        self.out = nn.Linear(width, out_dim)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        t = self._tokens(inputs, masks)
        (h, mh), (o, mo) = t[self.primary], t[self.other]
        a = self.att(h, o, o, key_padding_mask=~mo, need_weights=False)[0]
        lam = torch.sigmoid(self.gate(torch.cat((h, a), -1)))
        return self.out(pool(h + lam * a, mh))  # type: ignore[no-any-return]


class _MultiwayLayer(nn.Module):
    def __init__(self, width: int, heads: int, experts: list[str]) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(width, heads, batch_first=True)
        self.n1, self.n2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.experts = nn.ModuleDict({e: _ffn(width) for e in experts})

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, route: list[tuple[str, int, int]]
    ) -> torch.Tensor:
        h = self.n1(x)
        x = x + self.att(h, h, h, key_padding_mask=~mask, need_weights=False)[0]
        h = self.n2(x)
        return x + torch.cat([self.experts[e](h[:, a:b]) for e, a, b in route], dim=1)


@FUSION.register("multiway")
class MultiwayFusion(_Projected):
    """Multiway transformer (VLMo, BEiT-3): self-attention shared across the concatenated
    tokens of all modalities, feed-forward layers per modality (experts); the [CLS] token has
    its own fusion expert and is read out."""

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
    ) -> None:
        super().__init__(dims, out_dim, width, heads)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.type_emb = nn.Parameter(torch.randn(len(self.dims), width) * 0.02)
        self.layers = nn.ModuleList(
            _MultiwayLayer(width, heads, ["_fusion", *self.modalities]) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        t = self._tokens(inputs, masks)
        b = next(iter(t.values()))[0].shape[0]
        parts = [self.cls.expand(b, -1, -1)]
        ms = [torch.ones(b, 1, dtype=torch.bool, device=parts[0].device)]
        route, at = [("_fusion", 0, 1)], 1
        for i, m in enumerate(self.modalities):
            x, mask = t[m]
            parts.append(x + self.type_emb[i])
            ms.append(mask)
            route.append((m, at, at + x.shape[1]))
            at += x.shape[1]
        x, mask = torch.cat(parts, 1), torch.cat(ms, 1)
        for layer in self.layers:
            x = layer(x, mask, route)
        return self.out(self.norm(x[:, 0]))  # type: ignore[no-any-return]


@FUSION.register("bottleneck")
class BottleneckFusion(_Projected):
    """Attention bottlenecks (MBT, Nagrani et al. 2021): one Transformer stream per modality;
    from layer ``fusion_layer`` on, each stream also attends to ``n_bottleneck`` shared tokens,
    which every stream updates and which are averaged across streams. With ``fusion_layer ==
    layers`` the streams never exchange information. Read-out: the mean of the pooled
    streams."""

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
        fusion_layer: int = 1,
        n_bottleneck: int = 4,
    ) -> None:
        super().__init__(dims, out_dim, width, heads)
        if not 0 <= fusion_layer <= layers:
            raise ValueError(f"fusion_layer must lie in [0, layers={layers}], got {fusion_layer}")
        self.fusion_layer = fusion_layer
        self.n_layers = layers
        self.streams: nn.ModuleDict = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    nn.TransformerEncoderLayer(
                        width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
                    )
                    for _ in range(layers)
                )
                for m in self.modalities
            }
        )
        self.bottleneck = nn.Parameter(torch.randn(1, n_bottleneck, width) * 0.02)
        self.out = nn.Linear(width, out_dim)

    def _layer(self, modality: str, index: int) -> nn.Module:
        stream: nn.ModuleList = self.streams[modality]  # type: ignore[assignment]
        layer: nn.Module = stream[index]
        return layer

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        t = self._tokens(inputs, masks)
        xs = {m: t[m][0] for m in self.modalities}
        b = next(iter(xs.values())).shape[0]
        z = self.bottleneck.expand(b, -1, -1)
        nz = z.shape[1]
        for layer_idx in range(self.n_layers):
            if layer_idx < self.fusion_layer:
                xs = {
                    m: self._layer(m, layer_idx)(xs[m], src_key_padding_mask=~t[m][1])
                    for m in self.modalities
                }
                continue
            zs = []
            for m in self.modalities:
                mask = torch.cat((t[m][1], torch.ones(b, nz, dtype=torch.bool, device=z.device)), 1)
                y = self._layer(m, layer_idx)(torch.cat((xs[m], z), 1), src_key_padding_mask=~mask)
                xs[m], zm = y[:, :-nz], y[:, -nz:]
                zs.append(zm)
            z = torch.stack(zs).mean(0)
        pooled = torch.stack([pool(xs[m], t[m][1]) for m in self.modalities]).mean(0)
        return self.out(pooled)  # type: ignore[no-any-return]


@FUSION.register("qformer")
class QFormerFusion(_Projected):
    """Q-Former (BLIP-2): ``n_queries`` learned query tokens self-attend and cross-attend the
    (frozen) encoder outputs of the given modalities through the Q-Former model's pre-norm
    layers (:class:`alignfuse.layers.QFormerLayer`, queries only), then a final LayerNorm;
    the output has a fixed size whatever the input length. ``query_outputs`` returns the
    ``(B, n_queries, width)`` queries."""

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        width: int = 64,
        heads: int = 4,
        layers: int = 2,
        n_queries: int = 8,
    ) -> None:
        super().__init__(dims, out_dim, width, heads)
        self.queries = nn.Parameter(torch.randn(1, n_queries, width) * 0.02)
        self.layers = nn.ModuleList(QFormerLayer(width, heads, text=False) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def query_outputs(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        t = self._tokens(inputs, masks)
        kv = torch.cat([t[m][0] for m in self.modalities], 1)
        mask = torch.cat([t[m][1] for m in self.modalities], 1)
        q = self.queries.expand(kv.shape[0], -1, -1)
        no_text = kv.new_zeros(kv.shape[0], 0, kv.shape[-1])
        no_pad = torch.zeros(kv.shape[0], 0, dtype=torch.bool, device=kv.device)
        for layer in self.layers:
            q, _ = layer(q, no_text, no_pad, kv, None, image_pad=~mask)
        return self.norm(q)  # type: ignore[no-any-return]

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.out(self.query_outputs(inputs, masks).mean(1))  # type: ignore[no-any-return]


@FUSION.register("film")
class FiLMFusion(_Projected):
    """FiLM (Perez et al. 2018): the ``condition`` modality (pooled) produces a scale and a
    shift for every feature of the ``target`` modality's tokens, ``gamma * h + beta``; then a
    ReLU, pooling and a read-out."""

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        width: int = 64,
        heads: int = 1,
        condition: str | None = None,
    ) -> None:
        super().__init__(dims, out_dim, width, heads)
        self.condition, self.target = self._two_roles("FiLM", "condition", condition, -1)
        self.film = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, out_dim)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        t = self._tokens(inputs, masks)
        c = pool(*t[self.condition])
        gamma, beta = self.film(c).chunk(2, -1)
        h, mh = t[self.target]
        return self.out(pool(torch.relu((1 + gamma[:, None]) * h + beta[:, None]), mh))  # type: ignore[no-any-return]


@FUSION.register("san")
class StackedAttentionFusion(_Projected):
    """Stacked attention network (SAN, Yang et al. 2016) for question answering: the
    ``query`` modality (the question, pooled) attends over the other modality's regions in
    ``hops`` hops, ``u <- u + sum_i p_i v_i``. ``last_attention`` holds the attention of the
    last call, ``(B, hops, regions)``, for plots."""

    def __init__(
        self,
        dims: Mapping[str, int],
        out_dim: int,
        width: int = 64,
        heads: int = 1,
        hops: int = 2,
        query: str | None = None,
    ) -> None:
        super().__init__(dims, out_dim, width, heads)
        self.query, self.context = self._two_roles("SAN", "query", query, -1)
        self.w_i = nn.ModuleList(nn.Linear(width, width, bias=False) for _ in range(hops))
        self.w_q = nn.ModuleList(nn.Linear(width, width) for _ in range(hops))
        self.w_p = nn.ModuleList(nn.Linear(width, 1) for _ in range(hops))
        self.out = nn.Linear(width, out_dim)
        self.last_attention: torch.Tensor | None = None

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        t = self._tokens(inputs, masks)
        u = pool(*t[self.query])
        v, mv = t[self.context]
        maps = []
        for wi, wq, wp in zip(self.w_i, self.w_q, self.w_p, strict=True):
            h = torch.tanh(wi(v) + wq(u)[:, None])
            p = torch.softmax(wp(h)[..., 0].masked_fill(~mv, float("-inf")), dim=1)
            u = u + (p[..., None] * v).sum(1)
            maps.append(p.detach())
        self.last_attention = torch.stack(maps, 1)
        return self.out(u)  # type: ignore[no-any-return]
