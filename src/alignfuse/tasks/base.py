"""The task protocol: what the one training loop and the one suite runner ask of a task.

A task owns everything that differs between kinds of experiment (image-text retrieval,
speech-text retrieval, ...): which model and loss to build from the config, which batches an
epoch visits (a pure function of ``(seed, epoch)``, so a resumed run replays exactly the
batches an uninterrupted one would), one step's loss, what validation and the final
evaluation measure, and its sections of the report. The loop
(:class:`alignfuse.engine.fit.Fit`) owns the rest: seeding, optimiser and schedule,
clipping, data parallelism, the NaN guard, checkpoints, exact resume and progress.

A task the loop does not train (a closed-form estimator, a method with nothing to fit) is an
:class:`EstimatorTask` instead: ``fit`` and ``evaluate``, no batches or steps.

A new task is one file under ``alignfuse/tasks/`` holding a class registered in
:data:`alignfuse.registry.TASKS`, plus one suite YAML whose experiments name it in their
``task:`` section. See the README's "Adding a task".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.outputs import LossOutput

A = TypeVar("A")


@runtime_checkable
class Task(Protocol):
    """One kind of experiment, built for one resolved config on its data.

    Constructed as ``TaskClass(cfg, data, run_dir)`` after ``TaskClass.load_data(cfg)``;
    the suite runner shares one loaded dataset between the experiments whose ``data`` and
    ``task`` sections are equal.
    """

    name: ClassVar[str]
    cfg: ExperimentConfig

    def build(self) -> tuple[nn.Module, nn.Module]:
        """The model and the loss module (the loop seeds torch with ``train.seed`` first)."""
        ...

    def setup(self, model: nn.Module, loss_fn: nn.Module, device: torch.device, world: int) -> None:
        """Check that the built model and loss can be trained here (``world`` processes);
        raise :class:`~alignfuse.errors.ConfigError` naming the setting if not."""
        ...

    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (at least 1)."""
        ...

    def start(self, model: nn.Module, progress: bool) -> None:
        """Once per call of the loop's ``fit``, before its first step (precompute features of
        frozen towers, ...)."""
        ...

    def batch(self, epoch: int, index: int, rank: int, world: int) -> dict[str, Any]:
        """This rank's slice of batch ``index`` of ``epoch``, on the training device."""
        ...

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> LossOutput:
        """One step's loss. The loop back-propagates it, unless the step did so itself and
        returned a detached loss (GradCache)."""
        ...

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics (empty when the task has no validation split)."""
        ...

    def describe(self, metrics: dict[str, float]) -> str:
        """A few validation metrics for the loop's one line per epoch (may be empty)."""
        ...

    def save(self, run_dir: Path) -> None:
        """Write what a run folder needs besides checkpoints (the config, a vocabulary)."""
        ...

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], Any]:
        """The final metrics (a flat dict) and the task's artefacts for its report."""
        ...

    def headline(self, metrics: dict[str, float]) -> str:
        """The figures the runner prints when an experiment ends."""
        ...


@runtime_checkable
class EstimatorTask(Protocol):
    """A kind of experiment that the loop does not train: an estimator fit in closed form
    (the CCA family, scikit-learn style), a method with nothing to fit (warping one
    utterance onto another), or a pipeline whose parts train through
    :func:`alignfuse.engine.fit.fit_module` (the one loop) on their own.

    The runner times :meth:`fit` as the row's training time and :meth:`evaluate` as its
    evaluation time; ``steps`` is 0 and ``history`` empty in its results row.
    """

    name: ClassVar[str]
    cfg: ExperimentConfig

    def fit(self, progress: bool) -> None:
        """Fit whatever the experiment fits (a no-op for a method with no parameters)."""
        ...

    def evaluate(self) -> tuple[dict[str, float], Any]:
        """The final metrics (a flat dict) and the task's artefacts for its report."""
        ...

    def save(self, run_dir: Path) -> None:
        """Write what a run folder needs (the config, a fitted estimator)."""
        ...

    def headline(self, metrics: dict[str, float]) -> str:
        """The figures the runner prints when an experiment ends."""
        ...


@runtime_checkable
class TaskType(Protocol):
    """A task class: how it loads data, builds a task, and reports a suite of its runs.

    The suite's ``report.md`` is written by :func:`alignfuse.bench.report.write_suite_report`
    for every task alike (title, description, machine, leaderboard, notes); a task adds its
    own sections."""

    name: ClassVar[str]
    leaderboard_caption: ClassVar[str]
    arguments: ClassVar[type[Any] | None]  # the dataclass of task.args (None: takes none)

    def __call__(self, cfg: ExperimentConfig, data: Any, run_dir: Path) -> Task | EstimatorTask:
        """Build the task of one experiment."""
        ...

    def load_data(self, cfg: ExperimentConfig) -> Any:
        """Load (or generate) the data the config names. The runner shares what it returns
        between the experiments of a suite whose ``task`` and ``data`` sections are equal."""
        ...

    def leaderboard(self, rows: list[dict[str, Any]]) -> str:
        """The suite's leaderboard (a markdown table) from its result rows."""
        ...

    def report(
        self, rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        """The task's sections of ``report.md`` after the leaderboard (markdown, each
        starting with a ``## `` heading), writing their plots into ``out``. ``artefacts``
        maps each experiment trained in this run to ``(fit, artefacts, data)``: the finished
        loop (``None`` for an :class:`EstimatorTask`), what its ``evaluate`` returned and its
        data; an experiment reused from an earlier run maps to ``None``."""
        ...


class TaskDefaults:
    """What most tasks do for the protocol's optional parts; a task class inherits it and
    writes only what differs: one process, nothing before the first step, no validation,
    ``config.yaml`` in the run folder, the first few metrics as the headline."""

    name: ClassVar[str]
    cfg: ExperimentConfig

    def setup(self, model: nn.Module, loss_fn: nn.Module, device: torch.device, world: int) -> None:
        if world > 1:
            from alignfuse.errors import ConfigError

            raise ConfigError(f"task {self.name!r} trains in one process")

    def start(self, model: nn.Module, progress: bool) -> None:
        return None

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {}

    def describe(self, metrics: dict[str, float]) -> str:
        return ""

    def save(self, run_dir: Path) -> None:
        from alignfuse.config import save_config

        save_config(self.cfg, run_dir / "config.yaml")

    def headline(self, metrics: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in list(metrics.items())[:3])

    leaderboard_caption: ClassVar[str] = "test split"
    arguments: ClassVar[type[Any] | None] = None

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        """Every metric of the finished rows, with the training time."""
        from alignfuse.bench.report import metrics_table

        return metrics_table(rows)

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        return []


def check_task_args(kind: Any, cfg: ExperimentConfig) -> None:
    """Check ``cfg.task.args`` against the task class's ``arguments`` dataclass (a task that
    takes none must be given none), before any data is loaded."""
    from alignfuse.errors import ConfigError

    if kind.arguments is not None:
        task_args(kind.arguments, cfg)
    elif cfg.task.args:
        raise ConfigError(f"task {kind.name!r} takes no task.args, got {sorted(cfg.task.args)}")


def task_args(cls: type[A], cfg: ExperimentConfig) -> A:
    """``cfg.task.args`` as the task's argument dataclass ``cls`` (its defaults filled in,
    every key and type checked; an unknown key names the closest valid one)."""
    from alignfuse.config import from_dict

    return from_dict(cls, cfg.task.args, prefix="task.args")


class PermutedRows:
    """Batches for a task whose epoch visits ``self.n`` training rows in a permutation drawn
    from the epoch (``engine.fit.permuted_batches``: a pure function of the epoch, so a
    resumed run replays the same batches); a batch is ``{"rows": indices}``."""

    n: int
    cfg: ExperimentConfig
    _epoch: tuple[int, list[torch.Tensor]] | None = None

    def _rows(self, epoch: int) -> list[torch.Tensor]:
        from alignfuse.engine.fit import permuted_batches

        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, permuted_batches(self.n, self.cfg.train.batch_size, epoch))
        return self._epoch[1]

    def steps_per_epoch(self) -> int:
        return len(self._rows(0))

    def batch(self, epoch: int, index: int, rank: int, world: int) -> dict[str, Any]:
        return {"rows": self._rows(epoch)[index]}
