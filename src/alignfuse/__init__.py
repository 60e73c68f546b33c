"""alignfuse: multimodal alignment and fusion, verified building blocks and a benchmark.

Importing the package registers every built-in component, so ``list_losses()`` and friends
are complete without further imports.
"""

from alignfuse import (  # noqa: F401
    correlation,
    data,
    encoders,
    engine,
    fusion,
    interaction,
    losses,
    metrics,
    models,
    tasks,
    temporal,
    transport,
)
from alignfuse.config import ExperimentConfig, load_config
from alignfuse.outputs import LossOutput
from alignfuse.registry import (
    create_dataset,
    create_encoder,
    create_fusion,
    create_interaction,
    create_loss,
    create_metric,
    create_model,
    list_datasets,
    list_encoders,
    list_fusion,
    list_interactions,
    list_losses,
    list_metrics,
    list_models,
    list_tasks,
)
from alignfuse.tasks import (  # noqa: F401  (registers the tasks)
    clip_clause,
    image_text,
    matching,
    mvae,
    rerank,
    schema_linking,
    speech_text,
    two_view,
    vqa,
    word_boundaries,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ExperimentConfig",
    "LossOutput",
    "__version__",
    "create_dataset",
    "create_encoder",
    "create_fusion",
    "create_interaction",
    "create_loss",
    "create_metric",
    "create_model",
    "list_datasets",
    "list_encoders",
    "list_fusion",
    "list_interactions",
    "list_losses",
    "list_metrics",
    "list_models",
    "list_tasks",
    "load_config",
]
