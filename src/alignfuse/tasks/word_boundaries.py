"""Word boundaries carried from one utterance to another by warping (task
``word_boundaries``, suite ``temporal``).

On the ``spoken`` data (espeak-ng speech with true word timings), two pairings:

- ``voice_to_voice``: two renderings of one sentence (different voice and rate); warp the
  first onto the second on acoustic features and carry its word boundaries over.
- ``text_to_speech``: a reference synthesised from the text (the reference voice) warped onto
  each rendering, its boundaries carried over.

Each experiment is one method (``model.name``): ``uniform`` (equal time per word unit, the
naive baseline), ``linear`` (a linear stretch), ``dtw`` or ``soft_dtw`` (the expected
alignment), on per-utterance normalised ``model.args.features`` (``mfcc`` or ``logmel``)
every ``task.args.hop_ms`` ms; the rest of ``model.args`` goes to
:func:`~alignfuse.temporal.dtw_path` or :func:`~alignfuse.temporal.soft_dtw_alignment`.
Nothing is fitted, so this is an :class:`~alignfuse.tasks.base.EstimatorTask`.

The error of a boundary is ``|predicted - true|`` in milliseconds, over every word-unit start
and the end of the last word; reported per pairing as mean, median and the share within
20 / 50 ms.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from alignfuse.config import ExperimentConfig
from alignfuse.data.spoken import SpokenData, Utterance
from alignfuse.errors import ConfigError
from alignfuse.registry import DATASETS, TASKS, check_arguments, suggest
from alignfuse.tasks.base import TaskDefaults, task_args
from alignfuse.temporal import dtw_path, soft_dtw_alignment

METHODS = ("uniform", "linear", "dtw", "soft_dtw")
PAIRINGS = ("voice_to_voice", "text_to_speech")
FEATURES = ("mfcc", "logmel")


@dataclass
class WordBoundariesArgs:
    """``task.args`` of ``word_boundaries``."""

    hop_ms: float = 10.0  # the feature frames' hop


def normalised(feats: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean and variance normalisation (CMVN) of ``(frames, dim)`` features."""
    return (feats - feats.mean(0)) / feats.std(0).clamp_min(1e-6)


def frame_map(
    method: str, src: torch.Tensor, dst: torch.Tensor, args: dict[str, Any]
) -> tuple[np.ndarray, Any]:
    """For every source frame, the matched target frame (fractional); and the path if any."""
    n, m = len(src), len(dst)
    if method == "linear":
        return np.arange(n) * (m - 1) / max(n - 1, 1), None
    if method == "dtw":
        path, _ = dtw_path(src, dst, **args)
        p = path.numpy()
        sums = np.bincount(p[:, 0], weights=p[:, 1], minlength=n)
        counts = np.bincount(p[:, 0], minlength=n)
        return sums / counts, p
    if method == "soft_dtw":
        soft, _ = soft_dtw_alignment(src, dst, **args)
        a = soft.numpy()
        return (a * np.arange(m)[None, :]).sum(1) / a.sum(1), a
    raise ConfigError(f"unknown temporal method {method!r}{suggest(method, list(METHODS))}")


def predict_boundaries(
    method: str, features: str, args: dict[str, Any], src: Utterance, dst: Utterance, hop_ms: float
) -> tuple[dict[int, float], Any]:
    """``dst``'s word boundaries (ms, keyed as :meth:`Utterance.boundaries`) predicted from
    ``src``'s by ``method``; and the warping path (or soft alignment) if the method has one."""
    keys = [k for k in src.boundaries() if k in dst.boundaries()]
    if method == "uniform":
        # equal time for every word unit of the source over the target's duration
        starts = sorted(k for k in keys if k >= 0)
        total = dst.duration_ms
        pred = {k: total * i / len(starts) for i, k in enumerate(starts)}
        if -1 in keys:
            pred[-1] = total
        return pred, None
    fs = normalised(src.features(features, hop_ms=hop_ms).double())
    fd = normalised(dst.features(features, hop_ms=hop_ms).double())
    mapping, path = frame_map(method, fs, fd, args)
    sb = src.boundaries()
    pred = {}
    for k in keys:
        i = min(round(sb[k] / hop_ms), len(mapping) - 1)
        pred[k] = float(mapping[i]) * hop_ms
    return pred, path


def pairs(data: SpokenData, pairing: str) -> list[tuple[Utterance, Utterance]]:
    """The (source, target) utterance pairs of a pairing."""
    out = []
    for s in range(len(data.sentences)):
        rend = data.renderings(s)
        if pairing == "voice_to_voice":
            out += [(rend[i], rend[j]) for i in range(len(rend)) for j in range(i + 1, len(rend))]
        else:
            ref = data.reference(s)
            out += [(ref, r) for r in rend]
    return out


def summary(errors: list[float]) -> dict[str, float]:
    """Mean, median and the share within 20 / 50 ms of boundary errors in ms."""
    e = np.asarray(errors)
    return {
        "mae_ms": float(e.mean()),
        "median_ms": float(np.median(e)),
        "within_20ms": float((e <= 20).mean()),
        "within_50ms": float((e <= 50).mean()),
        "n_boundaries": len(e),
    }


@TASKS.register("word_boundaries")
class WordBoundariesTask(TaskDefaults):
    """Word boundaries carried between utterances of a sentence by a warping method."""

    name: ClassVar[str] = "word_boundaries"
    arguments: ClassVar[type[Any] | None] = WordBoundariesArgs
    leaderboard_caption: ClassVar[str] = "word-boundary error in ms"

    def __init__(self, cfg: ExperimentConfig, data: SpokenData, run_dir: str | Path) -> None:
        self.cfg, self.data = cfg, data
        self.hop_ms = task_args(WordBoundariesArgs, cfg).hop_ms
        if not self.hop_ms > 0:
            raise ConfigError(f"task.args.hop_ms must be positive, got {self.hop_ms}")
        self.method = cfg.model.name
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown temporal method {self.method!r} (model.name)"
                f"{suggest(self.method, list(METHODS))}; known: {', '.join(METHODS)}"
            )
        args = dict(cfg.model.args)
        self.features = str(args.pop("features", "mfcc"))
        if self.features not in FEATURES:
            raise ConfigError(
                f"model.args.features must be one of {', '.join(FEATURES)}, got {self.features!r}"
            )
        fns: dict[str, Callable[..., Any]] = {"dtw": dtw_path, "soft_dtw": soft_dtw_alignment}
        fn = fns.get(self.method)
        valid = list(inspect.signature(fn).parameters)[2:] if fn is not None else []
        check_arguments("method", self.method, args, valid)
        self.args = args
        if not isinstance(data, SpokenData):
            raise ConfigError(
                f"task 'word_boundaries' needs the spoken data; data {cfg.data.name!r} is "
                f"{type(data).__name__}"
            )

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> Any:
        return DATASETS.create(cfg.data.name, **cfg.data.args)

    def fit(self, progress: bool) -> None:
        return None  # a warping method has nothing to fit

    def evaluate(self) -> tuple[dict[str, float], Any]:
        metrics: dict[str, float] = {}
        example: Any = None
        for pairing in PAIRINGS:
            errors: list[float] = []
            for i, (src, dst) in enumerate(pairs(self.data, pairing)):
                pred, path = predict_boundaries(
                    self.method, self.features, self.args, src, dst, self.hop_ms
                )
                truth = dst.boundaries()
                errors += [abs(pred[k] - truth[k]) for k in pred]
                if i == 0 and pairing == "voice_to_voice":
                    example = (pred, path)
            metrics.update({f"{pairing}/{k}": v for k, v in summary(errors).items()})
        return metrics, {"example": example, "hop_ms": self.hop_ms}

    def headline(self, metrics: dict[str, float]) -> str:
        return ", ".join(
            f"{p} MAE {metrics[f'{p}/mae_ms']:.1f} ms over {int(metrics[f'{p}/n_boundaries'])}"
            for p in PAIRINGS
        )

    # ------------------------------------------------------------------ report

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import markdown_table, skipped_cells

        head = ["pairing", "method", "features", "MAE ms", "median ms", "within 20 ms"]
        head += ["within 50 ms", "seconds"]
        body = []
        for pairing in PAIRINGS:
            for r in rows:
                if r.get("status") != "ok":
                    if pairing == PAIRINGS[0]:
                        body.append(skipped_cells(r, len(head)))
                    continue
                m = {
                    k.split("/", 1)[1]: v for k, v in r["metrics"].items() if k.startswith(pairing)
                }
                model = r["config"]["model"]
                plain = model["name"] in ("uniform", "linear")
                body.append(
                    [pairing, r["name"], "-" if plain else model["args"].get("features", "mfcc")]
                    + [f"{m[k]:.1f}" for k in ("mae_ms", "median_ms")]
                    + [f"{m[k]:.3f}" for k in ("within_20ms", "within_50ms")]
                    + [f"{r['eval_seconds']:.1f}"]
                )
        return markdown_table(head, body)

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        done = [r for r in rows if r.get("status") == "ok"]
        if not done:
            return []
        _plot_errors(done, out / "errors.png")
        sections = [
            "## Boundary error by method\n\n`seconds`: both pairings.\n\n![errors](errors.png)\n"
        ]
        examples = {n: a[1]["example"] for n, a in artefacts.items() if a is not None}
        if isinstance(data, SpokenData) and examples:
            hop = next(a[1]["hop_ms"] for a in artefacts.values() if a is not None)
            src, dst = pairs(data, "voice_to_voice")[0]
            _plot_path(src, dst, examples, hop, out / "alignment_path.png")
            _plot_boundaries(dst, examples, data.sentences[dst.sentence], out / "boundaries.png")
            sections.append(
                f"## One voice-to-voice pair\n\nData: {len(data.sentences)} sentences, "
                f"{len(data.utterances)} utterances (espeak-ng), features every {hop:g} ms. "
                f"{src.voice} at {src.rate} wpm onto {dst.voice} at {dst.rate} wpm: "
                f'"{data.sentences[dst.sentence]}".\n\n![path](alignment_path.png)\n\n'
                "![boundaries](boundaries.png)\n"
            )
        return sections


def _plot_path(
    src: Utterance, dst: Utterance, example: dict[str, Any], hop: float, path: Path
) -> None:
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    fs = normalised(src.features("mfcc", hop_ms=hop).double())
    fd = normalised(dst.features("mfcc", hop_ms=hop).double())
    cost = torch.cdist(fs, fd).numpy()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cost, origin="lower", aspect="auto", cmap="viridis")
    for name, (_, p) in example.items():
        if p is not None and isinstance(p, np.ndarray) and p.ndim == 2 and p.shape[1] == 2:
            ax.plot(p[:, 1], p[:, 0], lw=1.5, label=f"{name} path")
    sb, db = src.boundaries(), dst.boundaries()
    keys = [k for k in sb if k in db]
    ax.scatter(
        [db[k] / hop for k in keys],
        [sb[k] / hop for k in keys],
        c="red",
        s=18,
        zorder=3,
        label="true word boundaries",
    )
    ax.set(
        xlabel=f"{dst.voice} {dst.rate} wpm (frame)",
        ylabel=f"{src.voice} {src.rate} wpm (frame)",
        title="DTW path over the MFCC cost matrix",
    )
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_boundaries(dst: Utterance, example: dict[str, Any], sentence: str, path: Path) -> None:
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    spec = dst.features("logmel").numpy().T
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.imshow(
        spec,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0, dst.duration_ms, 0, spec.shape[0]),
    )
    truth = dst.boundaries()
    for t in truth.values():
        ax.axvline(t, color="white", lw=1.5)
    for w, t in zip(dst.words, [w.start_ms for w in dst.words], strict=True):
        ax.text(t + 5, spec.shape[0] - 4, w.text, color="white", fontsize=7, va="top")
    styles = {"linear_stretch": ("yellow", ":"), "dtw_mfcc": ("cyan", "--")}
    for name, (color, ls) in styles.items():
        if name in example:
            for t in example[name][0].values():
                ax.axvline(t, color=color, ls=ls, lw=1.2)
            ax.plot([], [], color=color, ls=ls, label=name)
    ax.plot([], [], color="white", label="true")
    ax.set(xlabel="ms", ylabel="mel band", title=f"word boundaries: {sentence}")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_errors(rows: list[dict[str, Any]], path: Path) -> None:
    from alignfuse.bench.report import grouped_bars

    grouped_bars(
        path,
        [r["name"] for r in rows],
        {p: [r["metrics"][f"{p}/mae_ms"] for r in rows] for p in PAIRINGS},
        ylabel="mean |boundary error| (ms)",
        title="word-boundary error by method",
    )
