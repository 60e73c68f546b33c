"""Conformance with pytorch-metric-learning where the semantics coincide.

The settings that make them coincide: PML is given ``ref_emb`` (the other modality) and a copy
of the labels as ``ref_labels`` (with the very same tensor PML drops the diagonal pairs), a
``MeanReducer``, and for N-pairs a dot product without PML's default normalisation.
"""

import math

import pytest
import torch

from alignfuse.losses import contrastive, info_nce, n_pair, triplet

pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning import distances, reducers
from pytorch_metric_learning import losses as pml_losses


def _pairs(n, seed, dtype=torch.float64, d=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype), torch.randn(n, d, generator=g, dtype=dtype)


def test_conformance_contrastive():
    """PML ContrastiveLoss(pos_margin, neg_margin) with LpDistance(normalize_embeddings=True,
    power=1) and MeanReducer == contrastive(power=1, normalize=True)."""
    a, b = _pairs(8, 1)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 4, 2])
    ref = pml_losses.ContrastiveLoss(
        pos_margin=0.1,
        neg_margin=1.1,
        distance=distances.LpDistance(normalize_embeddings=True),
        reducer=reducers.MeanReducer(),
    )(a, labels, ref_emb=b, ref_labels=labels.clone())
    ours = contrastive(a, b, margin=1.1, pos_margin=0.1, power=1.0, labels=labels)
    assert float(ours) == pytest.approx(float(ref), rel=1e-8)


def test_conformance_triplet_margin():
    """PML TripletMarginLoss with CosineSimilarity and MeanReducer is one direction of our
    sum-over-negatives triplet, averaged over the N(N-1) triplets."""
    a, b = _pairs(7, 2)
    labels = torch.arange(7)
    fn = pml_losses.TripletMarginLoss(
        margin=0.2, distance=distances.CosineSimilarity(), reducer=reducers.MeanReducer()
    )
    ref = fn(a, labels, ref_emb=b, ref_labels=labels.clone()) + fn(
        b, labels, ref_emb=a, ref_labels=labels.clone()
    )
    ours = triplet(a, b, 0.2, "sum") / (7 * 6)
    assert float(ours) == pytest.approx(float(ref), rel=1e-8)


def test_conformance_n_pairs():
    """PML NPairsLoss with DotProductSimilarity(normalize_embeddings=False) (PML normalises by
    default; Sohn's loss does not) on cat(a, b) with labels cat(i, i) is the one-directional
    n_pair."""
    a, b = _pairs(6, 3)
    labels = torch.arange(6).repeat(2)
    dot = distances.DotProductSimilarity(normalize_embeddings=False)
    ref = pml_losses.NPairsLoss(distance=dot)(torch.cat([a, b]), labels)
    assert float(n_pair(a, b)) == pytest.approx(float(ref), rel=1e-8)


def test_conformance_ntxent():
    """PML NTXentLoss(temperature) with ref_emb is one direction of InfoNCE (unique labels)."""
    a, b = _pairs(6, 4)
    labels = torch.arange(6)
    fn = pml_losses.NTXentLoss(temperature=0.1, reducer=reducers.MeanReducer())
    ref = 0.5 * (
        fn(a, labels, ref_emb=b, ref_labels=labels.clone())
        + fn(b, labels, ref_emb=a, ref_labels=labels.clone())
    )
    assert float(info_nce(a, b, math.log(10.0))) == pytest.approx(float(ref), rel=1e-6)
