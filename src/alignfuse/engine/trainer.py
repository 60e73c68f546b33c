"""``Trainer``: the one loop (:class:`~alignfuse.engine.fit.Fit`) on the image-text task.

A convenience for the most common case: ``Trainer(cfg, data, run_dir).fit()`` is
``Fit(ImageTextTask(cfg, data, run_dir), run_dir).fit()``. Everything it does is in
:mod:`alignfuse.engine.fit` (the loop) and :mod:`alignfuse.tasks.image_text` (the task).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alignfuse.config import ExperimentConfig
from alignfuse.data.base import ImageTextData
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.fit import Fit, History, lr_factor, resolve_device, seed_everything
from alignfuse.tasks.image_text import ImageTextTask, build_loss, build_model, load_data

__all__ = [
    "History",
    "Trainer",
    "build_loss",
    "build_model",
    "load_data",
    "lr_factor",
    "resolve_device",
    "seed_everything",
]


class Trainer(Fit):
    """Train an image-text model (dual encoder, SCAN, ALBEF, Q-Former, captioner) with the
    one training loop.

    Args:
        cfg: the resolved experiment config.
        data: the dataset (must have ``train``; ``val`` is used for validation if present).
        run_dir: where checkpoints, the config, the vocabulary and the history go.
        progress: show progress bars (default: when stderr is a terminal).
        log: where to print one line per epoch (default: stderr).
    """

    task: ImageTextTask

    def __init__(
        self,
        cfg: ExperimentConfig,
        data: ImageTextData,
        run_dir: str | Path,
        progress: bool | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(ImageTextTask(cfg, data, run_dir), run_dir, progress, log)

    @property
    def data(self) -> ImageTextData:
        """The dataset trained on."""
        return self.task.data

    @property
    def tokenizer(self) -> Tokenizer:
        """The vocabulary of the text tower (built from the training captions)."""
        return self.task.tokenizer

    def epoch_pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The (image, caption) index pairs of an epoch, in training order."""
        return self.task.epoch_pairs(epoch)

    def batch(self, epoch: int, index: int, pairs: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
        """Tensors of this rank's slice of batch ``index`` of ``epoch``."""
        return self.task.pairs_batch(pairs, index, self.rank, self.world, self.model)

    def train_step(
        self, epoch: int, index: int, pairs: tuple[np.ndarray, np.ndarray] | None = None
    ) -> float:
        """Forward and backward of batch ``index`` of ``epoch`` (``pairs``, if given, must be
        ``epoch_pairs(epoch)``: the task computes the same); returns the loss."""
        return super().train_step(epoch, index)
