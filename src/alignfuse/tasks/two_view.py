"""Explicit statistical alignment of two views (task ``two_view``, suite ``correlation``).

Each experiment fits one correlation estimator (``model.name``: ``cca``, ``kcca``, ``pls``,
``scm``, ``dcca``, ``dccae``; ``model.args``: its arguments) on the training split of a
two-view dataset (``digits_twoview``, or your own ``twoview_files``) and evaluates it with the
multi-view papers' protocol (:func:`alignfuse.correlation.evaluate.evaluate_two_view`): the
sum of the test canonical correlations, a linear probe and k-means NMI on the view-1
projections, cross-view retrieval. The estimators are fit in closed form (or, DCCA and
DCCAE, by their own ``fit`` through the one loop), so this is an
:class:`~alignfuse.tasks.base.EstimatorTask`. The fitted estimator is saved in the
experiment's folder (``estimator/``, safetensors + JSON; read it back with
:func:`alignfuse.correlation.io.load_estimator`).

Task arguments: ``components`` (default 10), the number of canonical components.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from alignfuse.config import ExperimentConfig
from alignfuse.correlation import SCM
from alignfuse.correlation.evaluate import evaluate_two_view
from alignfuse.correlation.io import save_estimator
from alignfuse.correlation.methods import make_estimator
from alignfuse.data.twoview import TwoViewData
from alignfuse.errors import ConfigError
from alignfuse.registry import DATASETS, TASKS
from alignfuse.tasks.base import TaskDefaults, task_args


@dataclass
class TwoViewArgs:
    """``task.args`` of ``two_view``."""

    components: int = 10  # canonical components fitted and scored


@TASKS.register("two_view")
class TwoViewTask(TaskDefaults):
    """A correlation estimator fit on two views, scored by the multi-view protocol."""

    name: ClassVar[str] = "two_view"
    arguments: ClassVar[type[Any] | None] = TwoViewArgs
    leaderboard_caption: ClassVar[str] = "test split"

    def __init__(self, cfg: ExperimentConfig, data: TwoViewData, run_dir: str | Path) -> None:
        self.cfg, self.data = cfg, data
        self.args = task_args(TwoViewArgs, cfg)
        if self.args.components < 1:
            raise ConfigError(
                f"task.args.components must be a positive integer, got {self.args.components}"
            )
        if not isinstance(data, TwoViewData):
            raise ConfigError(
                f"task 'two_view' needs two-view data (digits_twoview, twoview_files); "
                f"data {cfg.data.name!r} is {type(data).__name__}"
            )
        self.estimator = make_estimator(cfg.model.name, self.args.components, cfg.model.args)

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> Any:
        data = DATASETS.create(cfg.data.name, **cfg.data.args)
        for split in ("train", "test"):
            data[split]  # a missing split is named now, not after fitting
        return data

    def fit(self, progress: bool) -> None:
        train = self.data["train"]
        if isinstance(self.estimator, SCM):  # supervised: the classes as well
            self.estimator.fit(train.x, train.y, train.labels)
        else:
            self.estimator.fit(train.x, train.y)

    def save(self, run_dir: Path) -> None:
        super().save(run_dir)
        save_estimator(self.estimator, run_dir / "estimator")

    def evaluate(self) -> tuple[dict[str, float], Any]:
        test = self.data["test"]
        metrics = evaluate_two_view(self.estimator, self.data, self.args.components)
        curve = np.abs(np.asarray(self.estimator.score(test.x, test.y))).tolist()
        return metrics, {"correlations": curve}

    def headline(self, metrics: dict[str, float]) -> str:
        return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())

    # ------------------------------------------------------------------ report

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import rows_table

        cols = [
            ("corr sum", "corr_sum"),
            ("probe acc", "probe_acc"),
            ("NMI", "nmi"),
            ("x2y R@1", "x2y_r1"),
            ("x2y R@5", "x2y_r5"),
            ("x2y R@10", "x2y_r10"),
        ]
        return rows_table(
            rows,
            ["method", *(c[0] for c in cols), "fit s"],
            lambda r: [
                r["name"],
                *(f"{r['metrics'][k]:.3f}" if k in r["metrics"] else "-" for _, k in cols),
                f"{r['train_seconds']:.2f}",
            ],
        )

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        curves = {n: a[1]["correlations"] for n, a in artefacts.items() if a is not None}
        sections = [
            "## Reading the figures\n\nCross-view retrieval asks for the *paired* view-2 row, but in two-view digits the "
            "views share only the class (about a tenth of the test rows are equally right), so "
            "its ceiling is low by construction.\n"
        ]
        if curves:
            _plot(curves, out / "correlations.png")
            sections.append(
                "## Canonical correlation per component (test)\n\n"
                "![correlations](correlations.png)\n"
            )
        return sections


def _plot(curves: dict[str, list[float]], path: Path) -> None:
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in curves.items():
        ax.plot(range(1, len(c) + 1), sorted(c, reverse=True), marker="o", label=name)
    ax.set(
        xlabel="component",
        ylabel="canonical correlation (test)",
        ylim=(0, 1),
        title="correlation per component",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
