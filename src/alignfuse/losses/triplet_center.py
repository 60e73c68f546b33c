"""Triplet-center loss, He et al. 2018 ("Triplet-Center Loss for Multi-View 3D Object
Retrieval"), shared across two modalities.

Each class ``y`` has a learned centre ``c_y``; both modalities' embeddings of class ``y``
are pulled towards ``c_y`` and pushed at least ``m`` further from the nearest other centre:

    L = 1/(2N) sum_{x in a, b} [ d(x, c_{y(x)}) + m - min_{k != y(x)} d(x, c_k) ]_+

with Euclidean ``d``. Labels are required (the classes shared by a pair).
"""

from __future__ import annotations

import torch
from torch import nn

from alignfuse.losses._common import reduce
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES
from alignfuse.similarity import check_pair


def triplet_center(
    a: torch.Tensor,
    b: torch.Tensor,
    labels: torch.Tensor,
    centers: torch.Tensor,
    margin: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Triplet-center loss of both modalities against ``centers`` ``(C, D)``.

    ``reduction="none"`` gives ``(N,)``: the mean of the two modalities' terms per pair.

    Example:
        >>> c = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
        >>> x = torch.tensor([[0.5, 0.0], [9.0, 0.0]])
        >>> float(triplet_center(x, x, torch.tensor([0, 1]), c, margin=1.0))
        0.0
    """
    check_pair(a, b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a and b must hold the same number of pairs: {a.shape[0]} vs {b.shape[0]}"
        )
    if centers.ndim != 2 or centers.shape[1] != a.shape[1] or centers.shape[0] < 2:
        raise ValueError(
            f"centers must have shape (C >= 2, {a.shape[1]}), got {tuple(centers.shape)}"
        )
    if labels.shape != (a.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be ({a.shape[0]},) integers, got {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= centers.shape[0]:
        raise ValueError(f"labels must lie in [0, {centers.shape[0]})")
    if not margin > 0:  # NaN too
        raise ValueError(f"margin must be > 0, got {margin}")
    labels = labels.to(a.device)

    def one(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, centers)
        own = d.gather(1, labels[:, None]).squeeze(1)
        other = d.scatter(1, labels[:, None], float("inf")).min(1).values
        return (own + margin - other).clamp_min(0)

    return reduce(0.5 * (one(a) + one(b)), reduction)


@LOSSES.register("triplet_center")
class TripletCenterLoss(nn.Module):
    """Triplet-center loss (He et al. 2018) with learned class centres shared by both
    modalities; needs ``labels``."""

    def __init__(
        self, num_classes: int = 2, dim: int = 256, margin: float = 1.0, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if not margin > 0:  # NaN too
            raise ValueError(f"margin must be > 0, got {margin}")
        self.centers = nn.Parameter(torch.randn(num_classes, dim) * 0.1)
        self.margin, self.reduction = margin, reduction

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor | None = None
    ) -> LossOutput:
        if labels is None:
            raise ValueError("triplet_center needs labels (one class per pair)")
        return LossOutput(triplet_center(a, b, labels, self.centers, self.margin, self.reduction))
