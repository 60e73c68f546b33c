"""The multimodal VAE on three modalities of the two-view digits (task ``mvae``, suite
``mvae``).

Modalities: the rotated digit (view 1), another noisy image of the same class (view 2) and
the label. A product-of-experts MVAE (Wu & Goodman 2018; ``model.args.aggregation: moe`` is
MMVAE's mixture, ``mopoe`` MoPoE's) is trained by the one loop on a sub-sampled ELBO
(``model.args.subsets``), with Adam at a constant learning rate and the KL weight rising
over the first ``task.args.anneal_epochs`` epochs. Evaluated as in the paper and its
successors: inference of the label from each subset of images, coherence of what each subset
generates (judged by a linear probe trained on real images), importance-weighted
log-likelihoods. See the report's column notes.

Task arguments: ``anneal_epochs`` (default 0: no annealing), ``samples`` (importance samples
of the likelihood estimates, default 500), ``eval_seed`` (default 0).
Model arguments (``model.name: mvae``): those of :class:`alignfuse.models.mvae.MVAE` but
``dims`` and ``likelihoods``, which come from the data.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.data.twoview import TwoViewData, TwoViewSplit
from alignfuse.errors import ConfigError
from alignfuse.models.mvae import MVAE
from alignfuse.outputs import LossOutput
from alignfuse.registry import DATASETS, TASKS, check_arguments
from alignfuse.tasks.base import TaskDefaults, task_args

LIKELIHOODS = {"rotated": "bernoulli", "noisy": "bernoulli", "label": "categorical"}


@dataclass
class MvaeArgs:
    """``task.args`` of ``mvae``."""

    anneal_epochs: int = 0  # the KL weight rises linearly over these first epochs
    samples: int = 500  # importance samples of the likelihood estimates
    eval_seed: int = 0  # seeds the evaluation's sampling


def modalities(split: TwoViewSplit) -> dict[str, torch.Tensor]:
    """The three modalities of a two-view split: ``rotated`` (view 1), ``noisy`` (view 2) and
    ``label``, as float32 pixels in [0, 1] and class indices."""
    if split.labels is None:
        raise ConfigError(f"the mvae task needs labelled data; split {split.name!r} has none")
    for v, arr in (("X", split.x), ("Y", split.y)):
        if arr.min() < 0 or arr.max() > 1:
            raise ConfigError(f"split {split.name!r}: {v} must hold pixels in [0, 1] (bernoulli)")
    return {
        "rotated": torch.as_tensor(split.x, dtype=torch.float32),
        "noisy": torch.as_tensor(split.y, dtype=torch.float32),
        "label": torch.as_tensor(split.labels, dtype=torch.int64),
    }


def fit_probes(train: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A logistic-regression classifier of the label per image modality, on real images."""
    from sklearn.linear_model import LogisticRegression

    y = train["label"].numpy()
    return {
        m: LogisticRegression(max_iter=2000, C=1.0).fit(train[m].numpy(), y)
        for m in ("rotated", "noisy")
    }


def evaluate_mvae(
    model: MVAE, test: dict[str, torch.Tensor], probes: dict[str, Any], samples: int, seed: int = 0
) -> dict[str, float]:
    """The task's metrics on ``test`` (see the report's column notes)."""
    g = torch.Generator().manual_seed(seed)
    y = test["label"]
    out: dict[str, float] = {}
    images = {"rotated": test["rotated"], "noisy": test["noisy"]}
    for name, given in (
        ("rotated", {"rotated": images["rotated"]}),
        ("noisy", {"noisy": images["noisy"]}),
        ("both", images),
    ):
        pred = model.predict(given, "label").argmax(1)
        out[f"label_from_{name}"] = float((pred == y).float().mean())
    for target, given_name, given in (
        ("rotated", "label", {"label": y}),
        ("noisy", "label", {"label": y}),
        ("rotated", "noisy", {"noisy": images["noisy"]}),
    ):
        gen = model.sample(target, given, generator=g).cpu().numpy()
        out[f"{target}_from_{given_name}"] = float(
            (probes[target].predict(gen) == y.numpy()).mean()
        )
    post = model.class_log_posterior({"rotated": images["rotated"]}, "label", samples, g)
    out["bayes_label_from_rotated"] = float((post.argmax(1) == y).float().mean())
    out["nll_label_from_rotated"] = -float(post.gather(1, y[:, None]).mean())
    out["nll_joint"] = -float(model.log_marginal(test, samples, g).mean())
    return out


@dataclass
class MvaeData:
    """The data of the task: the splits as modalities, the probes fit on real training
    images, and the probes' own test figures (the leaderboard's "pixel probe" row)."""

    data: TwoViewData
    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]
    probes: dict[str, Any]
    reference: dict[str, float]

    @property
    def dims(self) -> dict[str, int]:
        n_classes = int(max(self.train["label"].max(), self.test["label"].max())) + 1
        return {
            "rotated": self.train["rotated"].shape[1],
            "noisy": self.train["noisy"].shape[1],
            "label": n_classes,
        }


@TASKS.register("mvae")
class MvaeTask(TaskDefaults):
    """A multimodal VAE over a rotated digit, a noisy digit and the label."""

    name: ClassVar[str] = "mvae"
    arguments: ClassVar[type[Any] | None] = MvaeArgs
    leaderboard_caption: ClassVar[str] = "test split"

    def __init__(self, cfg: ExperimentConfig, data: MvaeData, run_dir: str | Path) -> None:
        self.cfg, self.data = cfg, data
        self.args = task_args(MvaeArgs, cfg)
        if cfg.model.name != "mvae":
            raise ConfigError(f"task 'mvae' trains model 'mvae', got model.name={cfg.model.name!r}")
        valid = [p for p in inspect.signature(MVAE).parameters if p not in ("dims", "likelihoods")]
        check_arguments("model", "mvae", cfg.model.args, valid)
        if self.args.anneal_epochs < 0:
            raise ConfigError(
                f"task.args.anneal_epochs must be >= 0, got {self.args.anneal_epochs}"
            )
        if self.args.samples < 1:
            raise ConfigError(f"task.args.samples must be >= 1, got {self.args.samples}")
        if not isinstance(data, MvaeData):
            raise ConfigError(
                f"task 'mvae' needs its own data (load_data); got {type(data).__name__}"
            )
        self.n = len(data.train["label"])
        self._epoch: tuple[int, list[dict[str, Any]]] | None = None
        self.beta = 1.0

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> MvaeData:
        from sklearn.metrics import log_loss

        data = DATASETS.create(cfg.data.name, **cfg.data.args)
        if not isinstance(data, TwoViewData):
            raise ConfigError(
                f"task 'mvae' needs two-view data (digits_twoview, twoview_files); "
                f"data {cfg.data.name!r} is {type(data).__name__}"
            )
        train, test = modalities(data["train"]), modalities(data["test"])
        probes = fit_probes(train)
        x, y = test["rotated"].numpy(), test["label"].numpy()
        reference = {
            "label_from_rotated": float(probes["rotated"].score(x, y)),
            "label_from_noisy": float(probes["noisy"].score(test["noisy"].numpy(), y)),
            "nll_label_from_rotated": float(
                log_loss(y, probes["rotated"].predict_proba(x), labels=probes["rotated"].classes_)
            ),
        }
        return MvaeData(data, train, test, probes, reference)

    # ------------------------------------------------------------------ training

    def build(self) -> tuple[nn.Module, nn.Module]:
        margs = dict(self.cfg.model.args)
        if "hidden" in margs:
            margs["hidden"] = tuple(margs["hidden"])
        try:
            model = MVAE(self.data.dims, LIKELIHOODS, **margs)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model 'mvae': {err}") from None
        self.beta = model.beta
        return model, nn.Identity()

    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.cfg.train.batch_size)

    def _epoch_batches(self, epoch: int) -> list[dict[str, Any]]:
        # one generator per epoch draws the order, then every batch's samples in turn
        if self._epoch is None or self._epoch[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.train.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=g)
            bs = self.cfg.train.batch_size
            batches = [
                {"epoch": epoch, "rows": order[s : s + bs], "generator": g}
                for s in range(0, self.n, bs)
            ]
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def batch(self, epoch: int, index: int, rank: int, world: int) -> dict[str, Any]:
        return self._epoch_batches(epoch)[index]

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> LossOutput:
        assert isinstance(model, MVAE)
        anneal = self.args.anneal_epochs
        model.beta = self.beta * min(1.0, (batch["epoch"] + 1) / anneal) if anneal else self.beta
        dev = next(model.parameters()).device
        rows = batch["rows"].to(dev)
        x = {m: v.to(dev)[rows] for m, v in self.data.train.items()}
        return LossOutput(model.loss(x, batch["generator"]))

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], Any]:
        assert isinstance(model, MVAE)
        model.beta = self.beta
        model.eval()
        test = self.data.test
        metrics = evaluate_mvae(
            model, test, self.data.probes, self.args.samples, self.args.eval_seed
        )
        metrics.update({f"reference/{k}": v for k, v in self.data.reference.items()})
        dims = self.data.dims
        side = math.isqrt(dims["rotated"])
        if side * side != dims["rotated"] or dims["rotated"] != dims["noisy"]:
            return metrics, None
        # image grids: samples per class, and the first test row of each class (its noisy
        # view) translated to the rotated one
        n_classes = dims["label"]
        labels = torch.arange(n_classes).repeat_interleave(8)
        g = torch.Generator().manual_seed(1)
        gen = model.sample("rotated", {"label": labels}, generator=g)
        generated = gen.cpu().numpy().reshape(n_classes, 8, side, side)
        firsts = _firsts(test["label"])
        given = {"noisy": test["noisy"][firsts].repeat_interleave(4, 0)}
        gen = model.sample("rotated", given, generator=g)
        crossed = gen.cpu().numpy().reshape(len(firsts), 4, side, side)
        return metrics, {"generated": generated, "crossed": crossed}

    def headline(self, metrics: dict[str, float]) -> str:
        return (
            f"rot → label {metrics['label_from_rotated']:.3f}, "
            f"label → rot {metrics['rotated_from_label']:.3f}, "
            f"NLL joint {metrics['nll_joint']:.1f}"
        )

    # ------------------------------------------------------------------ report

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import rows_table

        cols = [
            ("rot → label", "label_from_rotated", "{:.3f}"),
            ("noisy → label", "label_from_noisy", "{:.3f}"),
            ("both → label", "label_from_both", "{:.3f}"),
            ("label → rot", "rotated_from_label", "{:.3f}"),
            ("label → noisy", "noisy_from_label", "{:.3f}"),
            ("noisy → rot", "rotated_from_noisy", "{:.3f}"),
            ("Bayes rot → label", "bayes_label_from_rotated", "{:.3f}"),
            ("NLL rot → label", "nll_label_from_rotated", "{:.3f}"),
            ("NLL joint", "nll_joint", "{:.1f}"),
        ]
        table = rows_table(
            rows,
            ["model", *(c[0] for c in cols), "train s"],
            lambda r: [
                r["name"],
                *(f.format(r["metrics"][k]) for _, k, f in cols),
                f"{r['train_seconds']:.1f}",
            ],
        )
        done = [r for r in rows if r.get("status") == "ok"]
        if not done:
            return table
        ref = {k[len("reference/") :]: v for k, v in done[0]["metrics"].items() if "/" in k}
        probe = [f"{ref[k]:.3f}" if k in ref else "-" for _, k, _ in cols]
        return table + "| " + " | ".join(["pixel probe", *probe, "-"]) + " |\n"

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        sections = [NOTES]
        arts = {n: a[1] for n, a in artefacts.items() if a is not None and a[1] is not None}
        if arts and isinstance(data, MvaeData):
            _plot_generated({n: a["generated"] for n, a in arts.items()}, out / "generated.png")
            firsts = _firsts(data.test["label"])
            side = math.isqrt(data.dims["noisy"])
            noisy = data.test["noisy"][firsts].numpy().reshape(len(firsts), 1, side, side)
            crossed = {n: a["crossed"] for n, a in arts.items()}
            _plot_generated({"noisy input": noisy, **crossed}, out / "cross_modal.png")
            sections += [
                "## Digits generated from the label alone (rows: 0-9)\n\n"
                "![generated](generated.png)\n",
                "## Rotated digits generated from a noisy view (`noisy → rot`)\n\nThe first "
                "test row of each class; its noisy view on the left, four samples of each model "
                "beside it.\n\n![cross-modal](cross_modal.png)\n",
            ]
        return sections


def _firsts(labels: torch.Tensor) -> torch.Tensor:
    """The first test row of each class."""
    classes = sorted(set(labels.tolist()))
    return torch.tensor([int((labels == c).nonzero()[0]) for c in classes])


NOTES = """\
## Reading the columns

`S → T`: modality T inferred or generated from the subset S.
- `rot / noisy / both → label`: accuracy of the label decoded from the posterior mean of
  `q(z | x_S)`, S the rotated view, the noisy view or both. The row "pixel probe" is a
  logistic regression on the real test pixels of that view, for reference.
- `label → rot`, `label → noisy`, `noisy → rot` (coherence): images of T generated from S (one
  `z ~ q(z | x_S)` per test row, decoded to pixel means), classified by the logistic-regression
  probe trained on real training images of T; the fraction given the right class.
- `Bayes rot → label`, `NLL rot → label`: the model as a generative classifier,
  `p(label | rotated) = p(label, rotated) / sum_c p(c, rotated)`, each joint an
  importance-weighted (IWAE) estimate with the joint posterior as proposal: its accuracy, and
  `-log p(true label | rotated)` in nats (the probe's for reference).
- `NLL joint`: `-log p(rotated, noisy, label)` in nats (IWAE); with grey levels under a
  Bernoulli likelihood this is a pseudo-likelihood, comparable between rows only.
"""


def _plot_generated(generated: dict[str, np.ndarray], path: Path) -> None:
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    widths = [imgs.shape[1] for imgs in generated.values()]
    fig, axes = plt.subplots(
        1,
        len(generated),
        figsize=(0.4 * sum(widths) + 0.6 * len(widths), 4.2),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, (name, imgs) in zip(axes[0], generated.items(), strict=True):
        classes, per, side = imgs.shape[:3]
        cells = np.pad(imgs, ((0, 0), (0, 0), (1, 1), (1, 1)))  # a blank frame round each
        grid = cells.transpose(0, 2, 1, 3).reshape(classes * (side + 2), per * (side + 2))
        ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9, pad=4)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
