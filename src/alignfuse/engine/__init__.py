"""Training and evaluation: loop, checkpoints, resume, seeding."""

from alignfuse.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from alignfuse.engine.evaluate import evaluate, evaluate_split, evaluate_winoground
from alignfuse.engine.trainer import Trainer, build_loss, build_model, load_data, resolve_device

__all__ = [
    "Trainer",
    "build_loss",
    "build_model",
    "evaluate",
    "evaluate_split",
    "evaluate_winoground",
    "latest_checkpoint",
    "load_checkpoint",
    "load_data",
    "resolve_device",
    "save_checkpoint",
]
