"""Stacked cross attention, SCAN (Lee et al. 2018, "Stacked Cross Attention for Image-Text
Matching"), scoring every image against every caption in chunks.

For regions ``v_i`` of an image and words ``e_j`` of a caption, ``s_ij = cos(v_i, e_j)``.

Text-to-image (``t2i``): each word attends to the regions.
    ``s'_ij = [s_ij]_+ / (sqrt(sum_j [s_ij]_+^2) + eps)`` (normalised over words; ``eps`` added
    after the root, as in the authors' ``l2norm``),
    ``alpha_ij = softmax_i(lambda_1 s'_ij)``, ``a_j = sum_i alpha_ij v_i``,
    ``R_j = cos(e_j, a_j)``; the score aggregates ``R_j`` over the words.
Image-to-text (``i2t``): each region attends to the words, with the roles swapped
(normalisation over regions, softmax over words), aggregated over the regions.
Aggregation: ``lse``: ``(1 / lambda_2) log sum exp(lambda_2 R)``; ``avg``: the mean.

The attended vectors are never formed: ``e_j . a_j = sum_i alpha_ij (e_j . v_i)`` reuses the
dot products and ``|a_j|^2 = alpha_j^T G alpha_j`` with the image's ``R x R`` region Gram
matrix ``G``, so after the one large product of all regions with all words the cost per
image-caption pair is ``O(W R^2)`` instead of ``O(W R d)``. In float32 without autograd on
the CPU that product runs through oneDNN (:mod:`alignfuse._matmul`). Memory: one
unit-normalised copy of the inputs (made once) plus intermediates bounded by the chunk
sizes; without autograd these go into two buffers of one block's size made once per call.

Example:
    >>> import torch
    >>> scan = SCAN(direction="t2i", aggregation="lse")
    >>> regions, words = torch.randn(4, 36, 32), torch.randn(6, 12, 32)
    >>> scan(regions, words).shape
    torch.Size([4, 6])
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse._matmul import mm_nt
from alignfuse.interaction._common import check_pair
from alignfuse.registry import INTERACTIONS


def _clip_norm(
    s: torch.Tensor, dim: int, leaky: float, valid: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Clip, zero the padding (``valid``; ``None``: no padding), normalise over ``dim``."""
    s = _clip(s, leaky, out=None)
    if valid is not None:
        s = s * valid
    out: torch.Tensor = s / _norm_over(s, dim, eps, out=None)
    return out


def _clip(s: torch.Tensor, leaky: float, out: torch.Tensor | None) -> torch.Tensor:
    """``[s]_+`` (``leaky`` = 0) or the leaky ReLU of ``s``, into ``out`` if given."""
    if leaky > 0:
        if out is None:
            return F.leaky_relu(s, leaky)
        clipped: torch.Tensor = torch._C._nn.leaky_relu(s, leaky, out=out)
        return clipped
    return torch.clamp_min(s, 0, out=out)


def _norm_over(s: torch.Tensor, dim: int, eps: float, out: torch.Tensor | None) -> torch.Tensor:
    """``sqrt(sum s^2 over dim) + eps`` (the authors' ``l2norm``), the squares into ``out`` if
    given. The root of the clamped sum of squares has a zero (not NaN) gradient at an
    all-zero column, and is ~100x faster than torch.linalg.vector_norm over a middle
    dimension."""
    sq = torch.mul(s, s, out=out).sum(dim, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    return sq.sqrt() + eps


@INTERACTIONS.register("scan")
class SCAN(nn.Module):
    """Stacked cross attention similarity (no parameters; inputs are region and word features).

    Args:
        direction: ``"t2i"`` (words attend to regions) or ``"i2t"``.
        aggregation: ``"lse"`` or ``"avg"``.
        lambda_softmax: attention inverse temperature (paper: 9 for t2i, 4 for i2t).
        lambda_lse: LSE pooling sharpness (paper: 6 for t2i, 5 for i2t).
        leaky: slope of the clipping below zero (0: ``[.]_+`` as in the paper; the authors'
            code uses 0.1).
        chunk_images, chunk_captions: block sizes of the scoring; each block's
            intermediates hold ``chunk_images x R x chunk_captions x W`` values (16 x 64:
            1.8 MB at 36 regions and 12 words; 16 x 64 to 32 x 64 measured fastest here,
            ``benchmarks/bench_scan.py``).
    """

    def __init__(
        self,
        direction: str = "t2i",
        aggregation: str = "lse",
        lambda_softmax: float | None = None,
        lambda_lse: float | None = None,
        leaky: float = 0.0,
        eps: float = 1e-8,
        chunk_images: int = 16,
        chunk_captions: int = 64,
    ) -> None:
        super().__init__()
        if direction not in ("t2i", "i2t"):
            raise ValueError(f"direction must be 't2i' or 'i2t', got {direction!r}")
        if aggregation not in ("lse", "avg"):
            raise ValueError(f"aggregation must be 'lse' or 'avg', got {aggregation!r}")
        if chunk_images < 1 or chunk_captions < 1:
            raise ValueError("chunk_images and chunk_captions must be >= 1")
        self.direction = direction
        self.aggregation = aggregation
        self.lambda_softmax = float(
            lambda_softmax if lambda_softmax is not None else (9.0 if direction == "t2i" else 4.0)
        )
        self.lambda_lse = float(
            lambda_lse if lambda_lse is not None else (6.0 if direction == "t2i" else 5.0)
        )
        self.leaky = leaky
        self.eps = eps
        self.chunk_images = chunk_images
        self.chunk_captions = chunk_captions

    def extra_repr(self) -> str:
        return (
            f"direction={self.direction!r}, aggregation={self.aggregation!r}, "
            f"lambda_softmax={self.lambda_softmax}, lambda_lse={self.lambda_lse}"
        )

    def forward(
        self,
        regions: torch.Tensor,
        words: torch.Tensor,
        region_mask: torch.Tensor | None = None,
        word_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Similarities ``(n_images, n_captions)`` of regions ``(I, R, d)`` and words
        ``(C, W, d)``; masks (True = real token) for padded regions / words."""
        words, rm, wm = check_pair(regions, words, region_mask, word_mask)
        # per-token unit vectors, the contexts' norms and Gram matrices: once, not per block
        img = _Side(regions, rm, context=self.direction == "t2i")
        cap = _Side(words, wm, context=self.direction == "i2t")
        out = regions.new_empty(regions.shape[0], words.shape[0])
        tracked = torch.is_grad_enabled() and (regions.requires_grad or words.requires_grad)
        # without autograd the block intermediates go into two buffers made once per call:
        # fresh ~2 MB tensors per block cost a page fault per 4 KiB page each time (glibc
        # returns freed heap tops to the system), 13 million faults and half the time of a
        # first 1,000 x 5,000 call on the machine of BENCHMARKS.md
        size = self.chunk_images * regions.shape[1] * self.chunk_captions * words.shape[1]
        size = min(size, regions.shape[0] * regions.shape[1] * words.shape[0] * words.shape[1])
        work = None if tracked else regions.new_empty(2, size)
        t2i = self.direction == "t2i"
        for a in range(0, regions.shape[0], self.chunk_images):
            for b in range(0, words.shape[0], self.chunk_captions):
                v = img.rows(a, a + self.chunk_images)
                e = cap.rows(b, b + self.chunk_captions)
                block = self._attend(e, v, work) if t2i else self._attend(v, e, work).T
                out[a : a + self.chunk_images, b : b + self.chunk_captions] = block
        return out

    def _attend(self, query: _Side, context: _Side, work: torch.Tensor | None) -> torch.Tensor:
        """Query tokens attend to context tokens; returns (B, A) for B context items and A
        query items.

        Intermediates are laid out ``(B, K, A, Q)`` (context item, context token, query item,
        query token): the product of all context tokens with all query tokens lands in it
        without a copy, the normalisation over query tokens reduces over the contiguous last
        axis, and ``alpha^T G alpha`` is one batched product ``G_b @ alpha_b`` per context
        item, again without a copy. ``work`` (two flat buffers; ``None`` under autograd)
        receives the full-size intermediates."""
        qn, qm = query.unit, query.mask
        cn, cm, cnorm, gram = context.unit, context.mask, context.norm, context.gram
        assert cnorm is not None and gram is not None  # a context side carries both
        na, nq, d = qn.shape
        nb, nk, _ = cn.shape
        shape = (nb, nk, na, nq)
        n = nb * nk * na * nq
        w0, w1 = (
            (None, None) if work is None else (work[0, :n].view(shape), work[1, :n].view(shape))
        )
        # cosines of every context token with every query token: (B, K, A, Q)
        s = mm_nt(cn.reshape(nb * nk, d), qn.reshape(na * nq, d)).view(shape)
        # lambda_1 times the clipped cosines normalised over the query tokens (words for t2i)
        c = _clip(s, self.leaky, out=w0)
        if not (query.full and context.full):  # zero the padding
            c = torch.mul(c, cm[:, :, None, None], out=w0)
            c = torch.mul(c, qm[None, None], out=w0)
        logits = torch.mul(c, self.lambda_softmax / _norm_over(c, 3, self.eps, out=w1), out=w0)
        if not context.full:  # padded context tokens get no attention
            bias = torch.zeros_like(cnorm).masked_fill(~cm, float("-inf"))
            logits = torch.add(logits, bias[:, :, None, None], out=w0)
        # over context tokens
        if w1 is None:
            alpha = torch.softmax(logits, dim=1)
        else:
            alpha = torch._softmax(logits, 1, False, out=w1)
        # e_j . a_j = sum_i alpha_ij |c_i| cos(q_j, c_i) (cosine is scale-free in q_j)
        num = torch.mul(torch.mul(alpha, s, out=w0), cnorm[:, :, None, None], out=w0).sum(1)
        # |a_j|^2 = alpha_j^T G alpha_j with the context Gram matrix G (B, K, K)
        flat = (nb, nk, na * nq)
        ga = torch.bmm(gram, alpha.view(flat), out=None if w0 is None else w0.view(flat))
        den = torch.mul(ga.view(shape), alpha, out=w0).sum(1).clamp_min(self.eps).sqrt()
        r = num / den  # (B, A, Q): relevance of each query token
        qmask = qm[None]
        if self.aggregation == "avg":
            avg: torch.Tensor = (r * qmask).sum(2) / qmask.sum(2)
            return avg
        z = self.lambda_lse * r
        if not query.full:
            z = z.masked_fill(~qmask, float("-inf"))
        # log-sum-exp about the row maximum, finite since every item has a real token (the
        # inputs' check): torch.logsumexp's guards for infinite maxima cost more than the rest
        m = z.amax(2, keepdim=True)
        lse = (z - m).exp().sum(2).log() + m.squeeze(2)
        out: torch.Tensor = lse / self.lambda_lse
        return out


class _Side:
    """One side of the scoring (images or captions), prepared once: unit token vectors and
    the mask; for the attended side (the context) also token norms and Gram matrices."""

    unit: torch.Tensor
    mask: torch.Tensor
    full: bool  # no padding anywhere: the masks can be skipped
    norm: torch.Tensor | None
    gram: torch.Tensor | None

    def __init__(self, x: torch.Tensor, mask: torch.Tensor, context: bool) -> None:
        self.unit, self.mask, self.full = F.normalize(x, dim=-1), mask, bool(mask.all())
        self.norm = x.norm(dim=-1) if context else None
        self.gram = x @ x.transpose(1, 2) if context else None

    def rows(self, start: int, stop: int) -> _Side:
        out = _Side.__new__(_Side)
        out.unit, out.mask, out.full = self.unit[start:stop], self.mask[start:stop], self.full
        out.norm = None if self.norm is None else self.norm[start:stop]
        out.gram = None if self.gram is None else self.gram[start:stop]
        return out


def scan_similarity(regions: torch.Tensor, words: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Functional form: ``SCAN(**kwargs)(regions, words, region_mask, word_mask)``."""
    masks = {k: kwargs.pop(k) for k in ("region_mask", "word_mask") if k in kwargs}
    out: torch.Tensor = SCAN(**kwargs)(regions, words, **masks)
    return out
