"""Iterative and dynamic cross-modal interaction: IMRAM, DIME, and FILIP's late interaction as
a scorer. All score every image against every caption in chunks.

IMRAM (Chen et al. 2020): ``steps`` rounds of cross-modal attention. In round ``k`` each query
token ``x_i`` attends to the other modality (the SCAN attention: clipped cosines normalised
over the query tokens, softmax with ``lambda_softmax``) giving ``c_i``; the round's score is
the mean over query tokens of ``cos(x_i, c_i)``; the memory distillation unit refines the
query, ``x <- g * x + (1 - g) * tanh(W_o [x; c])`` with ``g = sigmoid(W_g [x; c])``. The score
is the sum over rounds; ``direction="both"`` adds the text-query and image-query models.

DIME (Qu et al. 2021), simplified to its mechanism: ``layers`` layers of four interaction
cells (rectified identity, intra-modal reasoning by self-attention, global-local guidance
gating the query by the other modality's global vector, cross-modal refinement by attention
to the other modality), each cell routing its output to the next layer's cells with learned,
input-dependent soft weights; the routed query tokens are then scored like an IMRAM round.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.interaction._common import check_pair
from alignfuse.interaction.scan import _clip_norm
from alignfuse.losses.token_wise import token_wise_similarity
from alignfuse.registry import INTERACTIONS


def attention_weights(
    q: torch.Tensor,
    c: torch.Tensor,
    qm: torch.Tensor,
    cm: torch.Tensor,
    lam: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    """SCAN attention weights of every query token of every pair over the context tokens:
    ``q`` (A, B, Q, d) per pair (or (A, Q, d), broadcast over B), ``c`` (B, K, d); returns
    (A, B, Q, K), each row a softmax over the real context tokens."""
    if q.ndim == 3:
        q = q[:, None].expand(-1, c.shape[0], -1, -1)
    s = torch.einsum("abqd,bkd->abqk", F.normalize(q, dim=-1), F.normalize(c, dim=-1))
    valid = (qm[:, None, :, None] & cm[None, :, None, :]).to(s.dtype)
    sn = _clip_norm(s, 2, 0.0, valid, eps)  # normalised over the query tokens
    return torch.softmax((lam * sn).masked_fill(~cm[None, :, None, :], float("-inf")), dim=-1)


def attend(
    q: torch.Tensor,
    c: torch.Tensor,
    qm: torch.Tensor,
    cm: torch.Tensor,
    lam: float,
    eps: float = 1e-8,
) -> torch.Tensor:
    """The attended context vector of every query token of every pair (A, B, Q, d); see
    :func:`attention_weights`."""
    return torch.einsum("abqk,bkd->abqd", attention_weights(q, c, qm, cm, lam, eps), c)


def _round_score(q: torch.Tensor, ctx: torch.Tensor, qm: torch.Tensor) -> torch.Tensor:
    """Mean over (real) query tokens of ``cos(q_i, ctx_i)``: (A, B)."""
    cos = F.cosine_similarity(q, ctx, dim=-1)  # (A, B, Q)
    w = qm[:, None, :].to(cos.dtype)
    return (cos * w).sum(-1) / w.sum(-1)


class _Chunked(nn.Module):
    """Chunked all-pairs scoring of ``(images, captions)``; subclasses score one block with
    queries and contexts already oriented."""

    def __init__(self, direction: str, chunk_images: int, chunk_captions: int) -> None:
        super().__init__()
        if direction not in ("t2i", "i2t", "both"):
            raise ValueError(f"direction must be 't2i', 'i2t' or 'both', got {direction!r}")
        if chunk_images < 1 or chunk_captions < 1:
            raise ValueError("chunk_images and chunk_captions must be >= 1")
        self.direction = direction
        self.chunk_images, self.chunk_captions = chunk_images, chunk_captions

    def _score(
        self, q: torch.Tensor, c: torch.Tensor, qm: torch.Tensor, cm: torch.Tensor, which: str
    ) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self,
        regions: torch.Tensor,
        words: torch.Tensor,
        region_mask: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Similarities ``(n_images, n_captions)``."""
        words, rm, wm = check_pair(regions, words, region_mask, word_mask)
        out = regions.new_zeros(regions.shape[0], words.shape[0])
        ci, cc = self.chunk_images, self.chunk_captions
        for a in range(0, regions.shape[0], ci):
            for b in range(0, words.shape[0], cc):
                v, vm = regions[a : a + ci], rm[a : a + ci]
                e, em = words[b : b + cc], wm[b : b + cc]
                block = v.new_zeros(v.shape[0], e.shape[0])
                if self.direction in ("t2i", "both"):
                    block = block + self._score(e, v, em, vm, "t2i").T
                if self.direction in ("i2t", "both"):
                    block = block + self._score(v, e, vm, em, "i2t")
                out[a : a + ci, b : b + cc] = block
        return out


@INTERACTIONS.register("imram")
class IMRAM(_Chunked):
    """Iterative matching with recurrent attention memory (see the module docstring).

    Args:
        dim: feature size of regions and words.
        steps: matching rounds ``K``.
        direction: ``"t2i"`` (words query the image), ``"i2t"`` or ``"both"``.
        lambda_softmax: attention inverse temperature.
    """

    def __init__(
        self,
        dim: int = 64,
        steps: int = 3,
        direction: str = "both",
        lambda_softmax: float = 9.0,
        chunk_images: int = 16,
        chunk_captions: int = 64,
    ) -> None:
        super().__init__(direction, chunk_images, chunk_captions)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.steps, self.lambda_softmax = steps, lambda_softmax
        self.gate = nn.ModuleDict({k: nn.Linear(2 * dim, dim) for k in ("t2i", "i2t")})
        self.update = nn.ModuleDict({k: nn.Linear(2 * dim, dim) for k in ("t2i", "i2t")})

    def _score(
        self, q: torch.Tensor, c: torch.Tensor, qm: torch.Tensor, cm: torch.Tensor, which: str
    ) -> torch.Tensor:
        x = q[:, None].expand(-1, c.shape[0], -1, -1)
        total = q.new_zeros(q.shape[0], c.shape[0])
        for k in range(self.steps):
            ctx = attend(x, c, qm, cm, self.lambda_softmax)
            total = total + _round_score(x, ctx, qm)
            if k + 1 < self.steps:
                xc = torch.cat((x, ctx), -1)
                g = torch.sigmoid(self.gate[which](xc))
                x = g * x + (1 - g) * torch.tanh(self.update[which](xc))
        return total


class _Cells(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_att = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.guide = nn.Linear(dim, dim)
        self.refine = nn.Linear(2 * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.router = nn.ModuleList(nn.Linear(dim, 4) for _ in range(4))

    def forward(
        self,
        j: int,
        x: torch.Tensor,
        qm: torch.Tensor,
        c: torch.Tensor,
        cm: torch.Tensor,
        lam: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell ``j`` (0 rectified identity, 1 intra-modal reasoning, 2 global-local guidance,
        3 cross-modal refinement) on per-pair queries ``x`` (A, B, Q, d); returns its output and
        its routing weights over the next layer's four cells (A, B, 4)."""
        a, b, nq, d = x.shape
        if j == 0:
            out = torch.relu(x)
        elif j == 1:
            flat = x.reshape(a * b, nq, d)
            pad = ~qm[:, None, :].expand(a, b, nq).reshape(a * b, nq)
            att = self.self_att(flat, flat, flat, key_padding_mask=pad, need_weights=False)[0]
            out = self.norm(flat + att).view(a, b, nq, d)
        elif j == 2:
            w = cm[:, :, None].to(c.dtype)
            glob = (c * w).sum(1) / w.sum(1)  # (B, d): the other modality's global vector
            out = x * torch.sigmoid(self.guide(glob))[None, :, None, :]
        else:
            ctx = attend(x, c, qm, cm, lam)
            out = self.norm(x + torch.tanh(self.refine(torch.cat((x, ctx), -1))))
        qw = qm[:, None, :, None].to(x.dtype)
        route = torch.softmax(self.router[j]((out * qw).sum(2) / qw.sum(2)), -1)
        return out, route


@INTERACTIONS.register("dime")
class DIME(_Chunked):
    """Dynamic modality interaction with routed cells (see the module docstring).

    Args:
        dim: feature size; heads: heads of the intra-modal self-attention.
        layers: layers of four cells; routing between consecutive layers is learned.
    """

    def __init__(
        self,
        dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        direction: str = "t2i",
        lambda_softmax: float = 9.0,
        chunk_images: int = 16,
        chunk_captions: int = 64,
    ) -> None:
        super().__init__(direction, chunk_images, chunk_captions)
        if layers < 1 or dim % heads:
            raise ValueError(
                f"DIME needs layers >= 1 and dim divisible by heads, got {layers}, {dim}, {heads}"
            )
        self.layers = nn.ModuleDict(
            {k: nn.ModuleList(_Cells(dim, heads) for _ in range(layers)) for k in ("t2i", "i2t")}
        )
        self.lambda_softmax = lambda_softmax

    def _score(
        self, q: torch.Tensor, c: torch.Tensor, qm: torch.Tensor, cm: torch.Tensor, which: str
    ) -> torch.Tensor:
        x = q[:, None].expand(-1, c.shape[0], -1, -1)
        inputs = [x] * 4
        weights = [x.new_full((*x.shape[:2], 4), 0.25)] * 4
        stack: nn.ModuleList = self.layers[which]  # type: ignore[assignment]
        for cells in stack:
            # each cell reads the routed mixture of the previous layer's outputs
            mixed = [
                sum(w[..., j, None, None] * o for w, o in zip(weights, inputs, strict=True))
                for j in range(4)
            ]
            done = [cells(j, mixed[j], qm, c, cm, self.lambda_softmax) for j in range(4)]
            inputs, weights = [o for o, _ in done], [r for _, r in done]
        final = sum(inputs) / 4
        return _round_score(final, attend(final, c, qm, cm, self.lambda_softmax), qm)  # type: ignore[arg-type]


@INTERACTIONS.register("filip")
class LateInteraction(nn.Module):
    """Token-wise late interaction (FILIP) as an all-pairs scorer: the mean over one side's
    tokens of the best cosine on the other side; ``direction`` ``"i2t"`` (over regions),
    ``"t2i"`` (over words) or ``"both"`` (their mean)."""

    def __init__(self, direction: str = "both", chunk: int = 256) -> None:
        super().__init__()
        if direction not in ("t2i", "i2t", "both"):
            raise ValueError(f"direction must be 't2i', 'i2t' or 'both', got {direction!r}")
        self.direction, self.chunk = direction, chunk

    def forward(
        self,
        regions: torch.Tensor,
        words: torch.Tensor,
        region_mask: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        words, rm, wm = check_pair(regions, words, region_mask, word_mask)
        sa, sb = token_wise_similarity(
            F.normalize(regions, dim=-1), F.normalize(words, dim=-1), rm, wm, self.chunk
        )
        if self.direction == "i2t":
            return sa
        if self.direction == "t2i":
            return sb
        out: torch.Tensor = 0.5 * (sa + sb)
        return out
