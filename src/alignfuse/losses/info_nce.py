"""Symmetric InfoNCE, the CLIP objective (Radford et al. 2021; van den Oord et al. 2018).

For L2-normalised embeddings ``a_i``, ``b_i`` of ``N`` matched pairs and a temperature
``tau = 1 / exp(logit_scale)``, with ``s_ij = <a_i, b_j> / tau``:

    L = 1/2 [ -1/N sum_i log softmax_j(s_ij)[i]  -  1/N sum_j log softmax_i(s_ij)[j] ]

With several positives per row (``labels`` or ``positive_mask``: duplicate captions or
images in a batch), the target of row ``i`` is uniform over its positives ``P(i)`` and the
row's loss is ``-1/|P(i)| sum_{p in P(i)} log softmax_j(s_ij)[p]`` (the supervised
contrastive form, Khosla et al. 2020), so duplicates are not punished as negatives. Label
smoothing ``eps`` mixes the target with the uniform distribution: ``(1 - eps) q + eps / N``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.losses._common import make_positive_mask, reduce
from alignfuse.losses.candidates import candidate_info_nce
from alignfuse.losses.chunked import check_chunked_call, chunked_info_nce
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import (
    Similarity,
    check_paired_batch,
    check_similarity,
    similarity_matrix,
)

DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


def _targets(pos: torch.Tensor, smoothing: float, dtype: torch.dtype) -> torch.Tensor:
    q = pos.to(dtype) / pos.sum(1, keepdim=True).to(dtype)
    if smoothing:
        q = (1.0 - smoothing) * q + smoothing / pos.shape[1]
    return q


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float = DEFAULT_LOGIT_SCALE,
    similarity: Similarity = "cosine",
    reduction: str = "mean",
    labels: torch.Tensor | None = None,
    positive_mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE between two batches of paired embeddings.

    Args:
        a: ``(N, D)`` embeddings of one modality.
        b: ``(N, D)`` embeddings of the other; row ``i`` is paired with ``a[i]``.
        logit_scale: log of the inverse temperature (scalar tensor or float).
        similarity: ``cosine`` or ``dot``.
        reduction: ``mean``, ``sum`` or ``none`` (per pair: the mean of row ``i``'s and
            column ``i``'s losses).
        labels: optional ``(N,)`` integer classes; pairs with equal labels are positives.
        positive_mask: optional ``(N, N)`` bool mask of positives (instead of ``labels``).
        label_smoothing: ``eps`` in ``[0, 1)``.
        chunk_size: compute the loss and its exact gradients in row chunks of this size,
            so memory grows with ``N x chunk_size`` instead of ``N^2`` (see
            :mod:`alignfuse.losses.chunked`; one positive per row, ``mean`` or ``sum``).

    Returns:
        The loss (a scalar, or ``(N,)`` with ``reduction="none"``).

    Example:
        >>> a = torch.eye(3); b = torch.eye(3)
        >>> round(float(info_nce(a, b, logit_scale=0.0)), 4)  # log(e + 2) - 1
        0.5514
    """
    check_paired_batch(a, b, reduction, "info_nce")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    n = a.shape[0]
    if chunk_size is not None:
        extra = labels is not None or positive_mask is not None or bool(label_smoothing)
        normalize = check_chunked_call(a, b, extra, reduction, similarity)
        loss = chunked_info_nce(a, b, logit_scale, chunk_size, normalize=normalize)
        return loss * n if reduction == "sum" else loss
    sims = similarity_matrix(a, b, similarity)
    return info_nce_from_similarity(
        sims, logit_scale, reduction, labels, positive_mask, label_smoothing
    )


def info_nce_from_similarity(
    sims: torch.Tensor,
    logit_scale: torch.Tensor | float = DEFAULT_LOGIT_SCALE,
    reduction: str = "mean",
    labels: torch.Tensor | None = None,
    positive_mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Symmetric InfoNCE on a precomputed ``(N, N)`` similarity matrix (pairs on the
    diagonal), e.g. from a cross-attention scorer. Arguments as :func:`info_nce`."""
    check_similarity(sims, reduction, "info_nce")
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    n = sims.shape[0]
    if not bool(torch.isfinite(torch.as_tensor(logit_scale)).all()):
        raise ValueError(f"logit_scale must be finite, got {logit_scale}")
    scale = logit_scale.exp() if isinstance(logit_scale, torch.Tensor) else math.exp(logit_scale)
    logits = sims * scale
    if labels is None and positive_mask is None and not label_smoothing:
        target = torch.arange(n, device=sims.device)
        per = 0.5 * (
            F.cross_entropy(logits, target, reduction="none")
            + F.cross_entropy(logits.T, target, reduction="none")
        )
        return reduce(per, reduction)
    pos = make_positive_mask(n, sims.device, labels, positive_mask)
    row = -(_targets(pos, label_smoothing, logits.dtype) * logits.log_softmax(1)).sum(1)
    col = -(_targets(pos.T, label_smoothing, logits.dtype) * logits.T.log_softmax(1)).sum(1)
    return reduce(0.5 * (row + col), reduction)


@LOSSES.register("info_nce")
class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP) with a learnable temperature, clamped at ``max_scale``."""

    def __init__(
        self,
        temperature: float = 0.07,
        learnable: bool = True,
        max_scale: float = 100.0,
        similarity: Similarity = "cosine",
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if max_scale <= 0:
            raise ValueError(f"max_scale must be > 0, got {max_scale}")
        init = torch.tensor(math.log(1.0 / temperature))
        if learnable:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)
        self.max_log_scale = math.log(max_scale)
        self.similarity = similarity
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.chunk_size = chunk_size

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        scale = self.logit_scale.clamp(max=self.max_log_scale)
        loss = info_nce(
            a,
            b,
            scale,
            self.similarity,
            self.reduction,
            labels,
            None,
            self.label_smoothing,
            self.chunk_size if labels is None else None,
        )
        return LossOutput(loss, {"temperature": float(1.0 / scale.detach().exp())})

    def from_similarity(self, sims: torch.Tensor) -> LossOutput:
        """The same loss on a model's own ``(N, N)`` similarity matrix (pairs on the
        diagonal), e.g. a cross-attention model's scores."""
        scale = self.logit_scale.clamp(max=self.max_log_scale)
        loss = info_nce_from_similarity(
            sims, scale, self.reduction, label_smoothing=self.label_smoothing
        )
        return LossOutput(loss, {"temperature": float(1.0 / scale.detach().exp())})

    def from_candidates(
        self, scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None
    ) -> LossOutput:
        """Multi-positive InfoNCE of each query over its own candidates
        (:func:`~alignfuse.losses.candidates.candidate_info_nce`), at this temperature."""
        scale = self.logit_scale.clamp(max=self.max_log_scale)
        loss = candidate_info_nce(scores, positive, valid, scale)
        return LossOutput(loss, {"temperature": float(1.0 / scale.detach().exp())})
