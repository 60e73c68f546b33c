"""Multi-class N-pair loss, Sohn 2016 ("Improved Deep Metric Learning with Multi-class N-pair
Loss Objective").

For ``N`` pairs (anchor ``a_i``, positive ``b_i``) and dot-product similarity:

    L = 1/N sum_i log(1 + sum_{j != i} exp(<a_i, b_j> - <a_i, b_i>))  +  lambda/N sum_i (|a_i|^2 + |b_i|^2)

The first term is the cross-entropy of row ``i`` of ``a b^T`` with target ``i``; the second is
the paper's L2 penalty on the (unnormalised) embeddings. ``symmetric=True`` adds the same
term with the roles of ``a`` and ``b`` exchanged and averages the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.losses._common import reduce
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import check_paired_batch


def n_pair(
    a: torch.Tensor,
    b: torch.Tensor,
    l2_reg: float = 0.0,
    symmetric: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """N-pair loss over in-batch negatives (dot product, unnormalised embeddings).

    Example:
        >>> a = torch.eye(3) * 5
        >>> float(n_pair(a, a)) < 1e-9  # positives win by a margin of 25
        True
    """
    check_paired_batch(a, b, reduction, "n_pair")
    if l2_reg < 0:
        raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
    logits = a @ b.T
    target = torch.arange(a.shape[0], device=a.device)
    per = F.cross_entropy(logits, target, reduction="none")
    if symmetric:
        per = 0.5 * (per + F.cross_entropy(logits.T, target, reduction="none"))
    if l2_reg:
        per = per + l2_reg * (a.pow(2).sum(1) + b.pow(2).sum(1))
    return reduce(per, reduction)


@LOSSES.register("n_pair")
class NPairLoss(nn.Module):
    """Multi-class N-pair loss (Sohn 2016) with its L2 embedding penalty."""

    def __init__(self, l2_reg: float = 0.0, symmetric: bool = True, reduction: str = "mean"):
        super().__init__()
        if l2_reg < 0:
            raise ValueError(f"l2_reg must be >= 0, got {l2_reg}")
        self.l2_reg, self.symmetric, self.reduction = l2_reg, symmetric, reduction

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> LossOutput:
        return LossOutput(n_pair(a, b, self.l2_reg, self.symmetric, self.reduction))
