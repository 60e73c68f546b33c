"""Symmetric InfoNCE, the CLIP objective (Radford et al. 2021; van den Oord et al. 2018).

For L2-normalised embeddings ``a_i``, ``b_i`` of ``N`` matched pairs and a temperature
``tau = 1 / exp(logit_scale)``, with ``s_ij = <a_i, b_j> / tau``:

    L = 1/2 [ -1/N sum_i log softmax_j(s_ij)[i]  -  1/N sum_j log softmax_i(s_ij)[j] ]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import check_paired_batch, similarity_matrix

DEFAULT_LOGIT_SCALE = math.log(1 / 0.07)


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    logit_scale: torch.Tensor | float = DEFAULT_LOGIT_SCALE,
    similarity: str = "cosine",
    reduction: str = "mean",
) -> torch.Tensor:
    """Symmetric InfoNCE between two batches of paired embeddings.

    Args:
        a: ``(N, D)`` embeddings of one modality.
        b: ``(N, D)`` embeddings of the other; row ``i`` is paired with ``a[i]``.
        logit_scale: log of the inverse temperature (scalar tensor or float).
        similarity: ``cosine`` or ``dot``.
        reduction: ``mean``, ``sum`` or ``none`` (per-pair average of both directions).

    Returns:
        The loss (a scalar, or ``(N,)`` with ``reduction="none"``).

    Example:
        >>> a = torch.eye(3); b = torch.eye(3)
        >>> round(float(info_nce(a, b, logit_scale=0.0)), 4)  # log(e + 2) - 1
        0.5514
    """
    check_paired_batch(a, b, reduction, "info_nce")
    scale = logit_scale.exp() if isinstance(logit_scale, torch.Tensor) else math.exp(logit_scale)
    logits = similarity_matrix(a, b, similarity) * scale
    target = torch.arange(a.shape[0], device=a.device)
    per = 0.5 * (
        F.cross_entropy(logits, target, reduction="none")
        + F.cross_entropy(logits.T, target, reduction="none")
    )
    if reduction == "none":
        return per
    return per.mean() if reduction == "mean" else per.sum()


@LOSSES.register("info_nce")
class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP) with a learnable temperature, clamped at ``max_scale``."""

    def __init__(
        self,
        temperature: float = 0.07,
        learnable: bool = True,
        max_scale: float = 100.0,
        similarity: str = "cosine",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
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

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> LossOutput:
        scale = self.logit_scale.clamp(max=self.max_log_scale)
        loss = info_nce(a, b, scale, self.similarity, self.reduction)
        return LossOutput(loss, {"temperature": float(1.0 / scale.detach().exp())})
