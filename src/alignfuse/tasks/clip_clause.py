"""Clip-to-clause localisation on the ``clips`` data (task ``clip_clause``, suite
``temporal``): learned frame and clause embeddings,
then every frame assigned to one of its clip's ordered clauses by a localisation method.

Embeddings: a small CNN reads each frame with its difference to the next frame (so motion is
visible); a bag-of-words encoder reads each clause; both are trained on the training clips so
that each frame scores its own clause highest among its clip's clauses (cross-entropy over
cosine similarities). Methods, all on the same embeddings:

- ``uniform``: equal spans (no embeddings), the naive baseline;
- ``argmax``: each frame's most similar clause, order ignored;
- ``dtw``: the optimal monotone warping path through ``1 - cosine``;
- ``ot``: entropic OT between frames and clauses (uniform masses) with a positional prior;
- ``graph``: a :class:`~alignfuse.temporal.GraphMatcher` (frames and clauses as chains)
  trained on the training clips; ``graph_dtw`` decodes its log-probabilities monotonically.

Scores: frame accuracy (share of frames given their true clause) and the mean IoU of each
clause's predicted and true frame span.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.data.clips import Clip, ClipData, ClipSplit
from alignfuse.engine.fit import fit_module, permuted_batches
from alignfuse.errors import ConfigError
from alignfuse.registry import DATASETS, TASKS, check_arguments, suggest
from alignfuse.tasks.base import TaskDefaults, task_args
from alignfuse.temporal import GraphMatcher, chain_adjacency, warping_path
from alignfuse.transport import sinkhorn

METHODS = ("uniform", "argmax", "dtw", "ot", "graph", "graph_dtw")


class FrameEncoder(nn.Module):
    """Frame + next-frame difference ``(T, 6, 32, 32)`` -> L2-normalised ``(T, dim)``."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(6, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


class ClauseEncoder(nn.Module):
    """Mean of word embeddings -> L2-normalised ``(K, dim)``."""

    def __init__(self, vocab: list[str], dim: int = 64) -> None:
        super().__init__()
        self.index = {w: i for i, w in enumerate(vocab)}
        self.bag = nn.EmbeddingBag(len(vocab), dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def forward(self, clauses: list[str]) -> torch.Tensor:
        ids: list[int] = []
        offsets: list[int] = []
        for c in clauses:
            offsets.append(len(ids))
            ids += [self.index[w] for w in c.split() if w in self.index]
        dev = self.bag.weight.device
        out = self.bag(torch.tensor(ids, device=dev), torch.tensor(offsets, device=dev))
        return F.normalize(self.proj(out), dim=-1)


def frame_input(clip: Clip) -> torch.Tensor:
    """``(T, 6, H, W)``: each frame in [0, 1] and its difference to the next (0 for the last)."""
    x = torch.tensor(clip.frames).permute(0, 3, 1, 2).float() / 255.0  # a copy: may be mmap
    diff = torch.cat((x[1:] - x[:-1], torch.zeros_like(x[:1])))
    return torch.cat((x, diff), dim=1)


@dataclass
class Embedder:
    frames: FrameEncoder
    clauses: ClauseEncoder
    temperature: float = 0.1

    @torch.no_grad()
    def __call__(self, clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
        self.frames.eval()
        self.clauses.eval()
        return self.frames(frame_input(clip)), self.clauses(clip.clauses)


def train_embedder(
    train: ClipSplit,
    vocab: list[str],
    *,
    dim: int = 64,
    epochs: int = 12,
    clips_per_step: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
) -> tuple[Embedder, list[float]]:
    """Train the frame and clause encoders with the engine loop; return them and the loss."""
    inputs = [frame_input(c) for c in train.clips]
    labels = [torch.from_numpy(c.labels()) for c in train.clips]
    temperature = 0.1

    def batches(epoch: int) -> list[list[int]]:
        parts = permuted_batches(len(inputs), clips_per_step, seed * 7919 + epoch)
        return [p.tolist() for p in parts]

    def loss(both: nn.Module, idx: list[int]) -> torch.Tensor:
        emb: torch.Tensor = both.get_submodule("frames")(torch.cat([inputs[i] for i in idx]))
        total, at = emb.new_zeros(()), 0
        for i in idx:
            t = len(inputs[i])
            logits = emb[at : at + t] @ both.get_submodule("clauses")(train.clips[i].clauses).T
            total = total + F.cross_entropy(logits / temperature, labels[i], reduction="sum")
            at += t
        return total / at

    both, history = fit_module(
        "clip-clause embedder",
        lambda: nn.ModuleDict({"frames": FrameEncoder(dim), "clauses": ClauseEncoder(vocab, dim)}),
        batches,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=1e-4,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    frames, clauses = both.get_submodule("frames"), both.get_submodule("clauses")
    assert isinstance(frames, FrameEncoder) and isinstance(clauses, ClauseEncoder)
    return Embedder(frames, clauses, temperature), history


def train_matcher(
    train: ClipSplit,
    embed: Embedder,
    *,
    hidden: int = 64,
    epochs: int = 10,
    clips_per_step: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
) -> tuple[GraphMatcher, list[float]]:
    """Train a graph matcher on frozen embeddings: NLL of each frame's true clause."""
    pairs = [(*embed(c), torch.from_numpy(c.labels())) for c in train.clips]

    def batches(epoch: int) -> list[list[int]]:
        parts = permuted_batches(len(pairs), clips_per_step, seed * 104729 + epoch)
        return [p.tolist() for p in parts]

    def loss(net: nn.Module, idx: list[int]) -> torch.Tensor:
        total, frames = torch.zeros(()), 0
        for i in idx:
            f, c, y = pairs[i]
            logp = net(f, c, chain_adjacency(len(f)), chain_adjacency(len(c)))
            total = total + F.nll_loss(logp, y, reduction="sum")
            frames += len(f)
        return total / frames

    trained, history = fit_module(
        "graph matcher",
        lambda: GraphMatcher(pairs[0][0].shape[1], hidden=hidden),
        batches,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=1e-4,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    assert isinstance(trained, GraphMatcher)
    matcher = trained
    return matcher, history


def _last_per_row(path: torch.Tensor, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    for i, j in path.tolist():
        out[i] = j
    return out


def localize(
    method: str,
    n_frames: int,
    frames: torch.Tensor | None,
    clauses: torch.Tensor | None,
    *,
    n_clauses: int | None = None,
    matcher: GraphMatcher | None = None,
    ot_reg: float = 0.05,
    position_weight: float = 1.0,
) -> np.ndarray:
    """Clause index ``(T,)`` of every frame by ``method`` (see the module docstring)."""
    if method == "uniform":
        k = n_clauses if n_clauses is not None else (clauses.shape[0] if clauses is not None else 0)
        return np.minimum((np.arange(n_frames) * k) // n_frames, k - 1)
    if frames is None or clauses is None:
        raise ValueError(f"method {method!r} needs frame and clause embeddings")
    sim = frames @ clauses.T
    if method == "argmax":
        return np.asarray(sim.argmax(1).numpy())
    if method == "dtw":
        path, _ = warping_path(1.0 - sim)
        return _last_per_row(path, n_frames)
    if method == "ot":
        pos_f = torch.arange(n_frames, dtype=sim.dtype) / max(n_frames - 1, 1)
        pos_c = torch.arange(sim.shape[1], dtype=sim.dtype) / max(sim.shape[1] - 1, 1)
        cost = (1.0 - sim) + position_weight * (pos_f[:, None] - pos_c[None, :]).pow(2)
        res = sinkhorn(None, None, cost.double(), reg=ot_reg, max_iter=2000, tol=1e-6, warn=False)
        return np.asarray(res.plan.argmax(1).numpy())
    if method in ("graph", "graph_dtw"):
        if matcher is None:
            raise ValueError(f"method {method!r} needs a trained matcher")
        with torch.no_grad():
            logp = matcher(
                frames, clauses, chain_adjacency(n_frames), chain_adjacency(clauses.shape[0])
            )
        if method == "graph":
            return np.asarray(logp.argmax(1).numpy())
        path, _ = warping_path(-logp.double())
        return _last_per_row(path, n_frames)
    raise ValueError(f"unknown localisation method {method!r}; known: {', '.join(METHODS)}")


def scores(clips: list[Clip], predictions: list[np.ndarray]) -> dict[str, float]:
    """Frame accuracy (over all frames) and mean clause-span IoU (over all clauses)."""
    correct = total = 0
    ious = []
    for clip, pred in zip(clips, predictions, strict=True):
        truth = clip.labels()
        correct += int((pred == truth).sum())
        total += len(truth)
        for k, (a, b) in enumerate(clip.spans):
            hit = np.flatnonzero(pred == k)
            if len(hit) == 0:
                ious.append(0.0)
                continue
            pa, pb = int(hit.min()), int(hit.max()) + 1
            inter = max(0, min(b, pb) - max(a, pa))
            ious.append(inter / (max(b, pb) - min(a, pa)))
    return {"frame_acc": correct / total, "span_iou": float(np.mean(ious))}


@dataclass
class _StageArgs:
    """Training of one stage with the one loop: epochs, clips per step, rate, seed."""

    epochs: int = 12
    clips_per_step: int = 16
    lr: float = 2e-3
    seed: int = 0


@dataclass
class EmbedderArgs(_StageArgs):
    """Training of the frame and clause encoders (:func:`train_embedder`)."""

    dim: int = 64


@dataclass
class MatcherArgs(_StageArgs):
    """Training of the graph matcher on the frozen embeddings (:func:`train_matcher`)."""

    epochs: int = 10
    hidden: int = 64


@dataclass
class ClipClauseArgs:
    """``task.args`` of ``clip_clause``."""

    embedder: EmbedderArgs = field(default_factory=EmbedderArgs)
    matcher: MatcherArgs = field(default_factory=MatcherArgs)


class ClipClauseData:
    """The clips, and the embedder and matcher trained on them, each trained once per
    setting and shared by the experiments of a suite (the runner shares one loaded dataset
    between experiments whose ``task`` and ``data`` sections are equal)."""

    def __init__(self, clips: ClipData) -> None:
        self.clips = clips
        self._embedders: dict[str, tuple[Embedder, list[float], float]] = {}
        self._matchers: dict[str, tuple[GraphMatcher, list[float], float]] = {}

    def embedder(self, args: EmbedderArgs, progress: bool) -> tuple[Embedder, list[float], float]:
        """The trained embedder (trained on first use): it, its losses, its training time."""
        key = json.dumps(asdict(args), sort_keys=True)
        if key not in self._embedders:
            t0 = time.perf_counter()
            embed, history = train_embedder(
                self.clips["train"], self.clips.vocabulary(), **asdict(args), progress=progress
            )
            self._embedders[key] = (embed, history, time.perf_counter() - t0)
        return self._embedders[key]

    def matcher(
        self, embedder: EmbedderArgs, args: MatcherArgs, progress: bool
    ) -> tuple[GraphMatcher, list[float], float]:
        """The graph matcher trained on the embedder's frozen embeddings (on first use)."""
        key = json.dumps([asdict(embedder), asdict(args)], sort_keys=True)
        if key not in self._matchers:
            embed, _, _ = self.embedder(embedder, progress)
            t0 = time.perf_counter()
            matcher, history = train_matcher(
                self.clips["train"], embed, **asdict(args), progress=progress
            )
            self._matchers[key] = (matcher, history, time.perf_counter() - t0)
        return self._matchers[key]


@TASKS.register("clip_clause")
class ClipClauseTask(TaskDefaults):
    """Every frame of a clip assigned one of its ordered clauses by a localisation method.

    ``model.name`` is one of :data:`METHODS`; ``model.args``: ``ot_reg`` and
    ``position_weight`` for ``ot``. The embedder (and, for ``graph`` / ``graph_dtw``, the
    matcher) is trained through the one loop the first time an experiment of the suite needs
    it; the row's training time is what that experiment waited for."""

    name: ClassVar[str] = "clip_clause"
    arguments: ClassVar[type[Any] | None] = ClipClauseArgs
    leaderboard_caption: ClassVar[str] = "test clips"

    def __init__(self, cfg: ExperimentConfig, data: ClipClauseData, run_dir: str | Path) -> None:
        self.cfg, self.data = cfg, data
        self.args = task_args(ClipClauseArgs, cfg)
        self.method = cfg.model.name
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown localisation method {self.method!r} (model.name)"
                f"{suggest(self.method, list(METHODS))}; known: {', '.join(METHODS)}"
            )
        check_arguments(
            "method",
            self.method,
            cfg.model.args,
            ["ot_reg", "position_weight"] if self.method == "ot" else [],
        )
        if not isinstance(data, ClipClauseData):
            raise ConfigError(
                f"task 'clip_clause' needs its own data (load_data); got {type(data).__name__}"
            )
        self.embed: Embedder | None = None
        self.graph: GraphMatcher | None = None
        self.losses: dict[str, list[float]] = {}

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> ClipClauseData:
        clips = DATASETS.create(cfg.data.name, **cfg.data.args)
        if not isinstance(clips, ClipData):
            raise ConfigError(
                f"task 'clip_clause' needs the clips data; data {cfg.data.name!r} is "
                f"{type(clips).__name__}"
            )
        return ClipClauseData(clips)

    def fit(self, progress: bool) -> None:
        if self.method == "uniform":
            return  # needs no embeddings
        self.embed, self.losses["embedder"], _ = self.data.embedder(self.args.embedder, progress)
        if self.method.startswith("graph"):
            self.graph, self.losses["matcher"], _ = self.data.matcher(
                self.args.embedder, self.args.matcher, progress
            )

    def evaluate(self) -> tuple[dict[str, float], Any]:
        test = self.data.clips["test"]
        preds = []
        for clip in test.clips:
            f, k = self.embed(clip) if self.embed is not None else (None, None)
            preds.append(
                localize(
                    self.method,
                    len(clip.frames),
                    f,
                    k,
                    n_clauses=len(clip.clauses),
                    matcher=self.graph,
                    **self.cfg.model.args,
                )
            )
        return scores(test.clips, preds), {"examples": preds[:4], "losses": self.losses}

    def headline(self, metrics: dict[str, float]) -> str:
        return f"frame accuracy {metrics['frame_acc']:.3f}, span IoU {metrics['span_iou']:.3f}"

    # ------------------------------------------------------------------ report

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import rows_table

        return rows_table(
            rows,
            ["method", "frame accuracy", "span IoU", "train s", "localise s"],
            lambda r: [
                r["name"],
                f"{r['metrics']['frame_acc']:.3f}",
                f"{r['metrics']['span_iou']:.3f}",
                f"{r['train_seconds']:.1f}",
                f"{r['eval_seconds']:.2f}",
            ],
        )

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        examples = {n: a[1]["examples"] for n, a in artefacts.items() if a is not None}
        if not isinstance(data, ClipClauseData) or not examples:
            return []
        test = data.clips["test"]
        _plot_timelines(test.clips[:4], examples, out / "clip_timelines.png")
        return [
            f"## Clips to clauses\n\n{len(data.clips['train'])} training and {len(test)} test "
            "clips; every frame is assigned one of its clip's ordered clauses. The embedder "
            "(and the graph matcher) is trained once, by the first experiment that needs it; "
            "its `train s` holds that time, later experiments reuse it.\n\n"
            "![timelines](clip_timelines.png)\n"
        ]


def _plot_timelines(clips: list[Any], examples: dict[str, list[np.ndarray]], path: Path) -> None:
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    names = ["truth", *examples]
    fig, axes = plt.subplots(
        len(clips), 1, figsize=(9, 1.0 + 0.32 * len(names) * len(clips)), squeeze=False
    )
    cmap = plt.get_cmap("tab10")
    for ax, (ci, clip) in zip(axes[:, 0], enumerate(clips), strict=True):
        for row, name in enumerate(names):
            labels = clip.labels() if name == "truth" else examples[name][ci]
            ax.bar(
                np.arange(len(labels)),
                0.8,
                bottom=len(names) - 1 - row,
                width=1.0,
                color=[cmap(int(k) % 10) for k in labels],
                align="edge",
            )
        ax.set_yticks(np.arange(len(names)) + 0.4, names[::-1], fontsize=7)
        ax.set_xlim(0, len(clip.frames))
        ax.set_title(" | ".join(clip.clauses), fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel("frame (colour = clause index)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
