"""Temporal and structural alignment of sequences: DTW and its constraints, subsequence
search, soft-DTW and its divergence.

Series are ``(n,)`` or ``(n, d)`` tensors or arrays; batches are ``(B, n, d)`` with optional
lengths or masks for variable-length series. CPU work runs in compiled numba kernels; other
devices use torch code that stays on the input's device.
"""

from alignfuse.temporal.dtw import (
    SubsequenceMatch,
    cdist_dtw,
    dtw,
    dtw_path,
    pairwise_cost,
    subsequence_dtw,
    warping_path,
)
from alignfuse.temporal.matching import GraphMatcher, chain_adjacency
from alignfuse.temporal.soft_dtw import (
    SoftDTWLoss,
    soft_dtw,
    soft_dtw_alignment,
    soft_dtw_divergence,
)

__all__ = [
    "GraphMatcher",
    "SoftDTWLoss",
    "SubsequenceMatch",
    "cdist_dtw",
    "chain_adjacency",
    "dtw",
    "dtw_path",
    "pairwise_cost",
    "soft_dtw",
    "soft_dtw_alignment",
    "soft_dtw_divergence",
    "subsequence_dtw",
    "warping_path",
]
