"""Two-stage retrieval: a frozen dual encoder's top ``k`` images per caption re-ranked by an
interaction scorer (task ``rerank``, suite ``fusion``).

The first stage is the global dual encoder of :mod:`alignfuse.tasks.frozen_towers`; the
second re-scores each caption's top ``task.args.k`` images by a scorer of ``alignfuse list
interaction`` (``model.name``; ``model.args`` its arguments) on the dual encoder's projected
region and word tokens (``model.name: none`` keeps the first stage: the baseline row). A scorer
with parameters (IMRAM, DIME) is first trained as a matcher on the training split's tokens
with the one loop (``train``: epochs, batch size, learning rate; symmetric InfoNCE over the
batch's all-pairs scores, ``task.args.scale`` times the scores as logits); one without (SCAN,
FILIP) is used as it is. Reported: text-to-image R@K, hard-negative accuracy (the true caption
against its minimal edit) and Winoground scores, by the scorer on tokens; the latency per
query (both stages: the re-scored pairs of every caption's and every image's top ``k``, by
:func:`alignfuse.engine.evaluate.rerank`, the re-ranker of the two-stage models). An
:class:`~alignfuse.tasks.base.EstimatorTask`.

Task arguments: ``k`` (default 16), ``scale`` (default 10), ``pretrain`` (the frozen towers).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.engine.evaluate import InteractionPairs, images_to_tensor, rerank, two_stage_metrics
from alignfuse.engine.fit import fit_module
from alignfuse.errors import ConfigError
from alignfuse.interaction.recurrent import attention_weights
from alignfuse.metrics.compositional import hard_negative_accuracy, winoground_scores
from alignfuse.metrics.retrieval import retrieval_metrics
from alignfuse.registry import INTERACTIONS, TASKS
from alignfuse.tasks.base import TaskDefaults, task_args
from alignfuse.tasks.frozen_towers import (
    FrozenTowers,
    frozen_towers,
    image_tokens,
    word_tokens,
)
from alignfuse.tasks.vqa import overlay

FIRST_STAGE = "none"


@dataclass
class RerankArgs:
    """``task.args`` of ``rerank``."""

    k: int = 16  # candidates re-scored per caption
    scale: float = 10.0  # logits = scale * scores when a scorer is trained
    pretrain: dict[str, Any] = field(default_factory=dict)  # the frozen towers' settings


@dataclass
class Probe:
    """Everything the compositional scores need, embedded once for every scorer: test images
    with their true caption and its minimal edit, and the Winoground groups; each as global
    vectors (dual encoder) and as projected tokens (interaction scorers)."""

    glob: dict[str, torch.Tensor]
    tokens: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    groups: int


@torch.no_grad()
def make_probe(model: Any, data: Any) -> Probe:
    """The :class:`Probe` of a dataset's test split and Winoground groups."""
    test = data["test"]
    images: dict[str, np.ndarray] = {}
    texts: dict[str, list[str]] = {}
    negs = test.extras.get("negatives")
    if negs:
        images["neg_img"] = test.images
        texts["pos"] = [test.captions[i][n["positive"]] for i, n in enumerate(negs)]
        texts["neg"] = [n["caption"] for n in negs]
    wino = data.winoground
    groups = 0
    if wino is not None and len(wino):
        groups = len(wino)
        images["wino_img"] = wino.images.reshape(-1, *wino.images.shape[2:])
        texts["wino_txt"] = [c for pair in wino.captions for c in pair]
    glob = {k: model.encode_image(images_to_tensor(v)) for k, v in images.items()}
    glob.update({k: model.encode_text(model.prepare_text(v)) for k, v in texts.items()})
    tokens: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {
        k: (model.image_proj(image_tokens(model, v)), None) for k, v in images.items()
    }
    tokens.update({k: word_tokens(model, v) for k, v in texts.items()})
    return Probe(glob, tokens, groups)


def _pair_scores(scorer: Any, v: torch.Tensor, w: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """Score image ``i`` with caption ``i`` only (diagonal), for aligned lists."""
    return torch.stack(
        [scorer(v[i : i + 1], w[i : i + 1], None, wm[i : i + 1])[0, 0] for i in range(len(v))]
    )


@torch.no_grad()
def compositional(scorer: Any, probe: Probe) -> dict[str, float]:
    """Hard-negative accuracy (the true caption against its minimal edit) and Winoground
    scores, by the global dual encoder (``scorer=None``) or an interaction scorer on tokens."""
    out: dict[str, float] = {}
    if "pos" in probe.glob:
        if scorer is None:
            img = probe.glob["neg_img"]
            p = (img * probe.glob["pos"]).sum(-1)
            n = (img * probe.glob["neg"]).sum(-1)
        else:
            regions = probe.tokens["neg_img"][0]
            p = _pair_scores(scorer, regions, *probe.tokens["pos"])  # type: ignore[arg-type]
            n = _pair_scores(scorer, regions, *probe.tokens["neg"])  # type: ignore[arg-type]
        out.update(hard_negative_accuracy(p.numpy(), n.numpy()))
    g = probe.groups
    if g:
        if scorer is None:
            vi = probe.glob["wino_img"].reshape(g, 2, -1)
            vt = probe.glob["wino_txt"].reshape(g, 2, -1)
            grid = torch.einsum("gcd,gid->gci", vt, vi)
        else:
            regions = probe.tokens["wino_img"][0]
            words, wm = probe.tokens["wino_txt"]
            grid = torch.zeros(g, 2, 2)
            for gi in range(g):
                pair = slice(2 * gi, 2 * gi + 2)
                grid[gi] = scorer(regions[pair], words[pair], None, wm[pair]).T  # type: ignore[index]
        out.update(winoground_scores(grid.numpy()))
    return out


class RerankData:
    """The frozen towers with the test split embedded once (global vectors, region and word
    tokens, the first-stage similarities, the compositional probe); the training split's
    tokens on first use by a trained scorer."""

    def __init__(self, towers: FrozenTowers) -> None:
        self.towers = towers
        model, test = towers.model, towers.data["test"]
        self.texts, owner = test.flat_captions()
        self.owner = torch.as_tensor(owner)
        with torch.no_grad():
            self.regions = model.image_proj(towers.test_tokens)
            img = model.encode_image(images_to_tensor(test.images))
            self.words, self.wmask = word_tokens(model, self.texts)
            txt = model.encode_text(model.prepare_text(self.texts))
        t0 = time.perf_counter()
        self.sims = img @ txt.T
        self.first_stage_ms = (time.perf_counter() - t0) / self.sims.shape[1] * 1000
        self.probe = make_probe(model, towers.data)
        self._train: tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray] | None = None

    def train_tokens(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """Region tokens, word tokens, word mask and caption owners of the training split."""
        if self._train is None:
            model, tr = self.towers.model, self.towers.data["train"]
            texts, owner = tr.flat_captions()
            with torch.no_grad():
                regions = model.image_proj(self.towers.train_tokens)
            words, mask = word_tokens(model, texts)
            self._train = (regions, words, mask, np.asarray(owner))
        return self._train


def train_scorer(
    scorer_name: str,
    args: dict[str, Any],
    regions: torch.Tensor,
    words: torch.Tensor,
    wmask: torch.Tensor,
    owner: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    scale: float = 10.0,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
) -> tuple[nn.Module, list[float]]:
    """Build (after seeding) and train an interaction scorer as a matcher: batches of images
    with one caption each, symmetric InfoNCE over the batch's all-pairs scores, with the one
    loop. Returns the scorer and each epoch's mean loss."""
    n_img = regions.shape[0]
    by_image: list[list[int]] = [[] for _ in range(n_img)]
    for c, i in enumerate(owner):
        by_image[int(i)].append(c)

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(n_img, generator=g)
        out = []
        for s in range(0, n_img - batch_size + 1, batch_size):
            imgs = order[s : s + batch_size]
            caps = torch.tensor(
                [
                    by_image[int(i)][int(torch.randint(len(by_image[int(i)]), (1,), generator=g))]
                    for i in imgs
                ]
            )
            out.append((imgs, caps))
        return out

    def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        imgs, caps = batch
        logits = scale * net(regions[imgs], words[caps], None, wmask[caps])
        target = torch.arange(len(imgs))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    return fit_module(
        scorer_name,
        lambda: INTERACTIONS.create(scorer_name, **args),
        batches,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=1e-4,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        progress=False,
    )


@TASKS.register("rerank")
class RerankTask(TaskDefaults):
    """A frozen dual encoder's candidates re-ranked by an interaction scorer."""

    name: ClassVar[str] = "rerank"
    arguments: ClassVar[type[Any] | None] = RerankArgs
    leaderboard_caption: ClassVar[str] = "test, text to image; compositional scores"

    def __init__(self, cfg: ExperimentConfig, data: RerankData, run_dir: str | Path) -> None:
        self.cfg, self.data = cfg, data
        self.run_dir = Path(run_dir)
        self.args = task_args(RerankArgs, cfg)
        if not isinstance(data, RerankData):
            raise ConfigError(
                f"task 'rerank' needs its own data (load_data); got {type(data).__name__}"
            )
        if self.args.k < 1:
            raise ConfigError(f"task.args.k must be a positive integer, got {self.args.k}")
        self.scorer_name = cfg.model.name
        self.scorer: nn.Module | None = None
        if self.scorer_name != FIRST_STAGE:
            args = dict(cfg.model.args)
            if self.scorer_name in ("imram", "dime"):
                args.setdefault("dim", data.regions.shape[-1])
            self.scorer_args = args
            INTERACTIONS.get(self.scorer_name)  # an unknown scorer is named
        self.history: list[float] = []

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> RerankData:
        return RerankData(frozen_towers(cfg, task_args(RerankArgs, cfg).pretrain))

    def fit(self, progress: bool) -> None:
        if self.scorer_name == FIRST_STAGE:
            return
        scorer = INTERACTIONS.create(self.scorer_name, **self.scorer_args)
        if any(p.requires_grad for p in scorer.parameters()):  # built again, seeded, to train
            t = self.cfg.train
            scorer, self.history = train_scorer(
                self.scorer_name,
                self.scorer_args,
                *self.data.train_tokens(),
                epochs=t.epochs,
                batch_size=t.batch_size,
                lr=t.lr,
                scale=self.args.scale,
                seed=t.seed,
                checkpoint_dir=self.run_dir / "scorer",
            )
        self.scorer = scorer.eval()

    @torch.no_grad()
    def evaluate(self) -> tuple[dict[str, float], Any]:
        d, k = self.data, self.args.k
        sims = d.sims
        if self.scorer is None:
            m = retrieval_metrics(sims, d.owner)
            recalls = {key: m[key] for key in ("t2i_r1", "t2i_r5", "t2i_r10")}
            recalls.update({key: m[key] for key in ("i2t_r1", "i2t_r5", "i2t_r10")})
            return {
                **recalls,
                **compositional(None, d.probe),
                "ms_per_query": round(d.first_stage_ms, 3),
            }, None
        # stage two: every caption's (and every image's) top k re-scored by the scorer alone
        t0 = time.perf_counter()
        i2t, t2i = rerank(
            InteractionPairs(self.scorer),
            sims,
            d.regions,
            d.words,
            d.wmask,
            k,
            add_first_stage=False,
        )
        ms = (time.perf_counter() - t0) / sims.shape[1] * 1000 + d.first_stage_ms
        m = two_stage_metrics(i2t, t2i, d.owner)
        return {
            **{
                key: m[key]
                for key in ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10")
            },
            **compositional(self.scorer, d.probe),
            "ms_per_query": round(ms, 3),
        }, None

    def headline(self, metrics: dict[str, float]) -> str:
        return (
            f"t2i R@1 {metrics['t2i_r1']:.3f}, R@5 {metrics['t2i_r5']:.3f}, "
            f"{metrics['ms_per_query']:.2f} ms per query"
        )

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import rows_table

        head = ["scorer", "t2i R@1", "t2i R@5", "t2i R@10", "hard-negative acc", "wino text"]
        head += ["wino image", "wino group", "train s", "ms / query"]
        keys = ("t2i_r1", "t2i_r5", "t2i_r10", "hard_negative_acc", "wino_text", "wino_image")

        def cells(r: dict[str, Any]) -> list[str]:
            model, args = r["config"]["model"]["name"], r["config"]["task"]["args"]
            label = "dual encoder (global)"
            if model != FIRST_STAGE:
                label = f"+ {model} re-rank (top {args.get('k', RerankArgs.k)})"
            values = [r["metrics"].get(k) for k in (*keys, "wino_group")]
            return [
                label,
                *("-" if v is None else f"{v:.3f}" for v in values),
                f"{r['train_seconds']:.0f}",
                f"{r['metrics']['ms_per_query']:.3f}",
            ]

        return rows_table(rows, head, cells)

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        if not isinstance(data, RerankData):
            return []
        _plot_scan_words(data, out / "scan_attention.png")
        return [
            "## SCAN's attention per word\n\nEach word of a test caption attends over the "
            "image regions (SCAN t2i, the frozen towers' projected tokens):\n\n"
            "![scan](scan_attention.png)\n"
        ]


@torch.no_grad()
def _plot_scan_words(data: RerankData, path: Path) -> None:
    """SCAN t2i attention of each word of the first test caption over its image's regions."""
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    split = data.towers.data["test"]
    regions, words, wmask, texts = data.regions, data.words, data.wmask, data.texts
    n_words = int(wmask[0].sum())
    # SCAN t2i: clipped cosines normalised over the words, softmax over the regions
    q = words[:1, :n_words]
    alpha = attention_weights(
        q,
        regions[:1],
        torch.ones(1, n_words, dtype=torch.bool),
        torch.ones(1, regions.shape[1], dtype=torch.bool),
        9.0,
    )[0, 0]  # (words, regions)
    cols = min(n_words, 8)
    fig, axes = plt.subplots(1, cols + 1, figsize=(1.8 * (cols + 1), 2.2))
    axes[0].imshow(split.images[0])
    axes[0].set_title(texts[0], fontsize=6)
    axes[0].axis("off")
    tokens = texts[0].split()
    for j in range(cols):
        overlay(
            axes[j + 1], split.images[0], alpha[j].numpy(), tokens[j] if j < len(tokens) else "?"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
