"""Pairwise sigmoid loss, SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image
Pre-Training").

With L2-normalised ``a_i``, ``b_j``, learnable log-temperature ``t'`` (``t = exp(t')``) and
bias ``b``, and ``z_ij = 1`` for positive pairs (the diagonal, or equal labels), else ``-1``:

    L = -1/N sum_i sum_j log sigmoid( z_ij (t <a_i, b_j> + b) )

Every pair is an independent binary problem, so no softmax over the batch is needed. The
paper initialises ``t' = log 10`` and ``b = -10``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.losses._common import make_positive_mask, reduce
from alignfuse.losses.candidates import candidate_sigmoid
from alignfuse.losses.chunked import check_chunked_call, chunked_sigmoid
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import (
    Similarity,
    check_paired_batch,
    similarity_matrix,
)

LOG_10 = math.log(10.0)


def sigmoid_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float = LOG_10,
    logit_bias: torch.Tensor | float = -10.0,
    similarity: Similarity = "cosine",
    reduction: str = "mean",
    labels: torch.Tensor | None = None,
    positive_mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss.

    Args:
        a, b: ``(N, D)`` paired embeddings.
        logit_scale: ``t'``, the log of the scale ``t``.
        logit_bias: ``b``.
        similarity: ``cosine`` or ``dot``.
        reduction: ``mean`` (the paper's: the sum over all pairs divided by ``N``), ``sum``,
            or ``none`` (per row ``i``: the sum over ``j``).
        labels, positive_mask: extra positives, as in :func:`info_nce`.
        chunk_size: exact loss and gradients in row chunks (memory ``N x chunk_size``;
            one positive per row, ``mean`` or ``sum``).

    Example:
        >>> a = torch.eye(2)
        >>> round(float(sigmoid_loss(a, a, 0.0, 0.0)), 4)  # t=1, b=0: -log s(1) - log s(0)
        1.0064
    """
    check_paired_batch(a, b, reduction, "sigmoid")
    if chunk_size is not None:
        extra = labels is not None or positive_mask is not None
        normalize = check_chunked_call(a, b, extra, reduction, similarity)
        loss = chunked_sigmoid(a, b, logit_scale, logit_bias, chunk_size, normalize=normalize)
        return loss * a.shape[0] if reduction == "sum" else loss
    scale = logit_scale.exp() if isinstance(logit_scale, torch.Tensor) else math.exp(logit_scale)
    logits = similarity_matrix(a, b, similarity) * scale + logit_bias
    pos = make_positive_mask(a.shape[0], a.device, labels, positive_mask)
    z = pos.to(logits.dtype) * 2 - 1
    per = -F.logsigmoid(z * logits).sum(1)
    return reduce(per, reduction)


@LOSSES.register("sigmoid")
class SigmoidLoss(nn.Module):
    """SigLIP pairwise sigmoid loss with learnable temperature and bias (Zhai et al. 2023)."""

    def __init__(
        self,
        scale: float = 10.0,
        bias: float = -10.0,
        learnable: bool = True,
        similarity: Similarity = "cosine",
        reduction: str = "mean",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        t, bb = torch.tensor(math.log(scale)), torch.tensor(float(bias))
        if learnable:
            self.logit_scale, self.logit_bias = nn.Parameter(t), nn.Parameter(bb)
        else:
            self.register_buffer("logit_scale", t)
            self.register_buffer("logit_bias", bb)
        self.similarity, self.reduction = similarity, reduction
        self.chunk_size = chunk_size

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        loss = sigmoid_loss(
            a,
            b,
            self.logit_scale,
            self.logit_bias,
            self.similarity,
            self.reduction,
            labels,
            None,
            self.chunk_size if labels is None else None,
        )
        return LossOutput(
            loss,
            {
                "scale": float(self.logit_scale.detach().exp()),
                "bias": float(self.logit_bias.detach()),
            },
        )

    def from_candidates(
        self, scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None
    ) -> LossOutput:
        """SigLIP's loss of each query over its own candidates
        (:func:`~alignfuse.losses.candidates.candidate_sigmoid`), at this scale and bias."""
        loss = candidate_sigmoid(scores, positive, valid, self.logit_scale, self.logit_bias)
        return LossOutput(
            loss,
            {
                "scale": float(self.logit_scale.detach().exp()),
                "bias": float(self.logit_bias.detach()),
            },
        )
