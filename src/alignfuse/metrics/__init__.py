"""The field's metrics: retrieval, compositional probes, classification, captioning,
schema linking and representation diagnostics."""

from alignfuse.metrics.captioning import bleu, cider, rouge_l
from alignfuse.metrics.classification import f1_scores, roc_auc
from alignfuse.metrics.compositional import hard_negative_accuracy, winoground_scores
from alignfuse.metrics.diagnostics import alignment, cka, modality_gap, uniformity
from alignfuse.metrics.linking import best_threshold, linking_metrics
from alignfuse.metrics.probes import normalized_mutual_info, probe_accuracy
from alignfuse.metrics.retrieval import retrieval_map, retrieval_metrics, retrieval_ranks
from alignfuse.metrics.zero_shot import zero_shot_metrics

__all__ = [
    "alignment",
    "best_threshold",
    "bleu",
    "cider",
    "cka",
    "f1_scores",
    "hard_negative_accuracy",
    "linking_metrics",
    "modality_gap",
    "normalized_mutual_info",
    "probe_accuracy",
    "retrieval_map",
    "retrieval_metrics",
    "retrieval_ranks",
    "roc_auc",
    "rouge_l",
    "uniformity",
    "winoground_scores",
    "zero_shot_metrics",
]
