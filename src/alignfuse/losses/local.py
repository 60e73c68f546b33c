"""Local region-word contrastive loss, GLoRIA (Huang et al. 2021, "GLoRIA: A Multimodal
Global-Local Representation Learning Framework").

For every image ``i`` (regions ``x_ir``) and caption ``j`` (words ``w_jk``), each word attends
over the image's regions, and the attended region vector is compared with the word:

    alpha_ijkr = softmax_r(gamma1 * cos(w_jk, x_ir))        c_ijk = sum_r alpha_ijkr x_ir
    Z_ij = 1/gamma2 * log sum_k exp(gamma2 * cos(c_ijk, w_jk))   (over the caption's real words)

``Z`` is a fine-grained image-caption similarity; the loss is symmetric InfoNCE over ``Z``
with scale ``gamma3``. Defaults follow the paper (gamma1 = 4, gamma2 = 5, gamma3 = 10).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.losses.info_nce import info_nce_from_similarity
from alignfuse.losses.token_wise import _check_tokens, as_tokens
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES


def local_similarity(
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor | None = None,
    region_mask: torch.Tensor | None = None,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    chunk: int = 64,
) -> torch.Tensor:
    """GLoRIA's word-attended similarity ``Z`` ``(N_images, N_captions)``.

    Args:
        regions: ``(N_i, R, D)`` region (or patch) features.
        words: ``(N_c, L, D)`` word features.
        word_mask, region_mask: ``True`` for real tokens.
        chunk: images per chunk (memory ``chunk x N_c x L x R``).
    """
    mr = _check_tokens(regions, region_mask, "regions")
    mw = _check_tokens(words, word_mask, "words")
    if regions.shape[2] != words.shape[2]:
        raise ValueError(
            f"regions and words differ in width: {regions.shape[2]} vs {words.shape[2]}"
        )
    if gamma1 <= 0 or gamma2 <= 0:
        raise ValueError(f"gamma1 and gamma2 must be > 0, got {gamma1}, {gamma2}")
    x = F.normalize(regions, dim=-1)
    w = F.normalize(words, dim=-1)
    out = []
    for s in range(0, x.shape[0], chunk):
        xc, mrc = x[s : s + chunk], mr[s : s + chunk]
        att = torch.einsum("jkd,ird->ijkr", w, xc) * gamma1
        att = att.masked_fill(~mrc[:, None, None, :], float("-inf")).softmax(-1)
        c = torch.einsum("ijkr,ird->ijkd", att, regions[s : s + chunk])
        cos = F.cosine_similarity(c, words[None], dim=-1)  # (c, N_c, L)
        cos = cos.masked_fill(~mw[None], float("-inf"))
        out.append(torch.logsumexp(gamma2 * cos, -1) / gamma2)
    return torch.cat(out)


def local_contrastive(
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor | None = None,
    region_mask: torch.Tensor | None = None,
    gamma1: float = 4.0,
    gamma2: float = 5.0,
    gamma3: float = 10.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Symmetric InfoNCE over GLoRIA's local similarity of ``N`` matched image-caption pairs."""
    if regions.shape[0] != words.shape[0]:
        raise ValueError(
            f"regions and words must hold the same number of pairs: {regions.shape[0]} vs {words.shape[0]}"
        )
    if gamma3 <= 0:
        raise ValueError(f"gamma3 must be > 0, got {gamma3}")
    z = local_similarity(regions, words, word_mask, region_mask, gamma1, gamma2)
    return info_nce_from_similarity(z, math.log(gamma3), reduction)


@LOSSES.register("local_contrastive")
class LocalContrastiveLoss(nn.Module):
    """Local region-word contrastive loss (GLoRIA, Huang et al. 2021): words attend over
    regions, word-level similarities are pooled per pair, InfoNCE over pairs. Takes region
    tokens ``(N, R, D)`` and word tokens ``(N, L, D)``; plain ``(N, D)`` vectors count as one
    token each."""

    def __init__(
        self,
        gamma1: float = 4.0,
        gamma2: float = 5.0,
        gamma3: float = 10.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if min(gamma1, gamma2, gamma3) <= 0:
            raise ValueError(f"gammas must be > 0, got {gamma1}, {gamma2}, {gamma3}")
        self.gamma1, self.gamma2, self.gamma3, self.reduction = gamma1, gamma2, gamma3, reduction

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> LossOutput:
        a, b = as_tokens(a), as_tokens(b)
        loss = local_contrastive(
            a, b, mask_b, mask_a, self.gamma1, self.gamma2, self.gamma3, self.reduction
        )
        return LossOutput(loss)
