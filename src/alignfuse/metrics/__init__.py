"""The field's metrics: retrieval and compositional probes."""

from alignfuse.metrics.compositional import hard_negative_accuracy, winoground_scores
from alignfuse.metrics.retrieval import retrieval_metrics, retrieval_ranks

__all__ = ["hard_negative_accuracy", "retrieval_metrics", "retrieval_ranks", "winoground_scores"]
