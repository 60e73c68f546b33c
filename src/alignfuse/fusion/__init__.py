"""Fusion of modalities into one representation. Every module takes a mapping of modality
name to tensor (vectors ``(B, d)`` or sequences ``(B, L, d)``, optional padding masks) and
returns ``(B, out_dim)``; build one with ``create_fusion(name, dims=..., out_dim=...)``.

Vector fusions (sequences are mean-pooled): ``early``, ``late``, ``hybrid``, ``tensor``
(TFN), ``low_rank`` (LMF), ``kernel`` (multiple kernel learning), ``graph``, ``mvae`` (product
of experts). Token fusions: ``co_attention`` (ViLBERT), ``single_stream`` (ViLT / UNITER),
``gated`` (gate-and-add), ``multiway`` (VLMo / BEiT-3), ``bottleneck`` (MBT), ``qformer``
(BLIP-2), ``film``, ``san`` (stacked attention).
"""

from alignfuse.fusion._base import Fusion, pool
from alignfuse.fusion.attention import (
    BottleneckFusion,
    CoAttentionFusion,
    FiLMFusion,
    GatedFusion,
    MultiwayFusion,
    QFormerFusion,
    SingleStreamFusion,
    StackedAttentionFusion,
)
from alignfuse.fusion.mvae import MVAEFusion, product_of_experts
from alignfuse.fusion.vector import (
    EarlyFusion,
    GraphFusion,
    HybridFusion,
    KernelFusion,
    LateFusion,
    LowRankFusion,
    TensorFusion,
)

__all__ = [
    "BottleneckFusion",
    "CoAttentionFusion",
    "EarlyFusion",
    "FiLMFusion",
    "Fusion",
    "GatedFusion",
    "GraphFusion",
    "HybridFusion",
    "KernelFusion",
    "LateFusion",
    "LowRankFusion",
    "MVAEFusion",
    "MultiwayFusion",
    "QFormerFusion",
    "SingleStreamFusion",
    "StackedAttentionFusion",
    "TensorFusion",
    "pool",
    "product_of_experts",
]
