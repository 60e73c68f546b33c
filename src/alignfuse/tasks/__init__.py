"""Tasks: what differs between kinds of experiment, as plugins of the one training loop (or,
for an :class:`~alignfuse.tasks.base.EstimatorTask`, fitted and evaluated by the runner).

``alignfuse list tasks`` names them; an experiment picks one in its ``task:`` section
(default ``image_text``). See :mod:`alignfuse.tasks.base` for the protocol. The built-in
tasks register when :mod:`alignfuse` is imported (its ``__init__`` imports their modules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignfuse.config import ExperimentConfig
from alignfuse.errors import ConfigError
from alignfuse.registry import TASKS
from alignfuse.tasks.base import EstimatorTask, Task, TaskType


def task_type(cfg: ExperimentConfig) -> TaskType:
    """The registered task class that ``cfg.task.name`` names."""
    factory: Any = TASKS.get(cfg.task.name).factory
    if not isinstance(factory, TaskType):
        raise TypeError(
            f"task {cfg.task.name!r} is registered with a factory that is no task class"
        )
    return factory


def create_task(
    cfg: ExperimentConfig, data: Any = None, run_dir: str | Path = "."
) -> Task | EstimatorTask:
    """Build the task of an experiment: ``data`` as its task's ``load_data(cfg)`` returns it
    (loaded here when ``None``); ``run_dir`` is where a run keeps its files (a vocabulary
    saved there is reused)."""
    kind = task_type(cfg)
    if data is None:
        data = kind.load_data(cfg)
    return kind(cfg, data, Path(run_dir))


def looped(task: Task | EstimatorTask) -> Task:
    """``task`` if the training loop trains it; else a :class:`ConfigError` saying so."""
    if not isinstance(task, Task):
        raise ConfigError(
            f"task {task.cfg.task.name!r} is fitted, not trained by the loop (an estimator "
            "task): alignfuse train CONFIG or alignfuse bench fits and evaluates it, and its run "
            "folder keeps the figures in metrics.json"
        )
    return task


__all__ = ["EstimatorTask", "Task", "TaskType", "create_task", "looped", "task_type"]
