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
image-caption pair is ``O(W R^2)`` instead of ``O(W R d)``. Memory: one unit-normalised
copy of the inputs (made once) plus intermediates bounded by the chunk sizes.

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

from alignfuse.interaction._common import check_pair
from alignfuse.registry import INTERACTIONS


def _clip_norm(
    s: torch.Tensor, dim: int, leaky: float, valid: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """Clip, zero the padding (``valid``; ``None``: no padding), normalise over ``dim``."""
    s = F.leaky_relu(s, leaky) if leaky > 0 else s.clamp_min(0)
    if valid is not None:
        s = s * valid
    # the root of the clamped sum of squares has a zero (not NaN) gradient at an all-zero
    # column, and is ~100x faster than torch.linalg.vector_norm over a middle dimension
    sq = s.square().sum(dim, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)
    out: torch.Tensor = s / (sq.sqrt() + eps)
    return out


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
        chunk_images, chunk_captions: block sizes of the scoring; small blocks keep the
            ``(captions, words, images, regions)`` intermediates in cache (16 x 64 measured
            fastest here, ``benchmarks/bench_scan.py``).
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
        for a in range(0, regions.shape[0], self.chunk_images):
            for b in range(0, words.shape[0], self.chunk_captions):
                v = img.rows(a, a + self.chunk_images)
                e = cap.rows(b, b + self.chunk_captions)
                t2i = self.direction == "t2i"
                block = self._attend(e, v).T if t2i else self._attend(v, e)
                out[a : a + self.chunk_images, b : b + self.chunk_captions] = block
        return out

    def _attend(self, query: _Side, context: _Side) -> torch.Tensor:
        """Query tokens attend to context tokens; returns (A, B) for A query items and B
        context items."""
        qn, qm = query.unit, query.mask
        cn, cm, cnorm, gram = context.unit, context.mask, context.norm, context.gram
        assert cnorm is not None and gram is not None  # a context side carries both
        na, nq, d = qn.shape
        nb, nk, _ = cn.shape
        # cosines of every query token with every context token: (A, Q, B, K)
        s = (qn.reshape(na * nq, d) @ cn.reshape(nb * nk, d).T).view(na, nq, nb, nk)
        padded = not (query.full and context.full)
        valid = (qm[:, :, None, None] & cm[None, None, :, :]).to(s.dtype) if padded else None
        # normalise the clipped cosines over the query tokens (words for t2i)
        sn = _clip_norm(s, 1, self.leaky, valid, self.eps)
        logits = self.lambda_softmax * sn
        if not context.full:
            logits = logits.masked_fill(~cm[None, None, :, :], float("-inf"))
        alpha = torch.softmax(logits, dim=-1)  # over context tokens
        # e_j . a_j = sum_i alpha_ij |c_i| cos(q_j, c_i) (cosine is scale-free in q_j)
        num = (alpha * s * cnorm[None, None]).sum(-1)  # (A, Q, B)
        # |a_j|^2 = alpha_j^T G alpha_j with the context Gram matrix G (B, K, K)
        ga = torch.einsum("bkl,aqbl->aqbk", gram, alpha)
        den = (ga * alpha).sum(-1).clamp_min(self.eps).sqrt()
        r = num / den  # (A, Q, B): relevance of each query token
        qmask = qm[:, :, None]
        if self.aggregation == "avg":
            avg: torch.Tensor = (r * qmask).sum(1) / qmask.sum(1)
            return avg
        z = self.lambda_lse * r
        if not query.full:
            z = z.masked_fill(~qmask, float("-inf"))
        lse = torch.logsumexp(z, dim=1)
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
