"""The ``temporal`` benchmark: word boundaries in synthesised speech found by warping, each
method against naive baselines (uniform segmentation, linear stretch).

Tasks on the ``spoken`` data:

- ``voice_to_voice``: two renderings of one sentence (different voice and rate); warp the
  first onto the second on acoustic features and carry its word boundaries over.
- ``text_to_speech``: synthesise a reference from the text (the reference voice), warp it onto
  a rendering, carry the reference's boundaries over.

The error of a boundary is ``|predicted - true|`` in milliseconds, over every word-unit start
and the end of the last word; reported as mean, median and the share within 20 / 50 ms.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignfuse._io import write_text_atomic
from alignfuse.bench.report import machine, markdown_table, pyplot
from alignfuse.bench.suite import check_keys, read_checked_suite, suite_kind
from alignfuse.data.spoken import SpokenData, Utterance, load_spoken
from alignfuse.errors import ConfigError
from alignfuse.registry import suggest
from alignfuse.temporal import dtw_path, soft_dtw_alignment

KEYS = {"name", "kind", "description", "speech", "clips"}
SPEECH_KEYS = {"data", "hop_ms", "methods"}
CLIPS_KEYS = {"data", "methods", "embedder", "matcher", "ot"}
METHOD_KEYS = {"name", "method", "features", "args"}
METHODS = ("uniform", "linear", "dtw", "soft_dtw")
TASKS = ("voice_to_voice", "text_to_speech")


def is_temporal_suite(name_or_path: str) -> bool:
    """Whether a suite (built-in name or YAML path) is of kind ``temporal``."""
    return suite_kind(name_or_path) == "temporal"


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


def _predict(
    method: str, features: str, args: dict[str, Any], src: Utterance, dst: Utterance, hop_ms: float
) -> tuple[dict[int, float], Any]:
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


def _pairs(data: SpokenData, task: str) -> list[tuple[Utterance, Utterance]]:
    out = []
    for s in range(len(data.sentences)):
        rend = data.renderings(s)
        if task == "voice_to_voice":
            out += [(rend[i], rend[j]) for i in range(len(rend)) for j in range(i + 1, len(rend))]
        else:
            ref = data.reference(s)
            out += [(ref, r) for r in rend]
    return out


def _summary(errors: list[float]) -> dict[str, float]:
    e = np.asarray(errors)
    return {
        "mae_ms": float(e.mean()),
        "median_ms": float(np.median(e)),
        "within_20ms": float((e <= 20).mean()),
        "within_50ms": float((e <= 50).mean()),
        "n_boundaries": len(e),
    }


def run_temporal_suite(
    name_or_path: str, out: str | Path, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run every task and method of a temporal suite; write results, leaderboard and report."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    raw = read_checked_suite(name_or_path, KEYS)
    speech = raw.get("speech") or {}
    check_keys(speech, SPEECH_KEYS, "speech")
    methods = speech.get("methods") or []
    for m in methods:
        check_keys(m, METHOD_KEYS, "method")
        if m["method"] not in METHODS:
            raise ConfigError(
                f"unknown temporal method {m['method']!r}{suggest(m['method'], list(METHODS))}"
            )
    clips_cfg = raw.get("clips") or {}
    check_keys(clips_cfg, CLIPS_KEYS, "clips")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    hop = float(speech.get("hop_ms", 10.0))
    t0 = time.perf_counter()
    data = load_spoken(**(speech.get("data") or {}))
    log(
        f"data spoken: {len(data.sentences)} sentences, {len(data.utterances)} utterances ({time.perf_counter() - t0:.1f} s)"
    )
    rows: list[dict[str, Any]] = []
    example: dict[str, Any] = {}
    for task in TASKS:
        pairs = _pairs(data, task)
        for m in methods:
            t0 = time.perf_counter()
            errors: list[float] = []
            for pi, (src, dst) in enumerate(pairs):
                pred, path = _predict(
                    m["method"], m.get("features", "mfcc"), m.get("args") or {}, src, dst, hop
                )
                truth = dst.boundaries()
                errors += [abs(pred[k] - truth[k]) for k in pred]
                if pi == 0 and task == "voice_to_voice":
                    example[m["name"]] = (pred, path)
            row = {
                "task": task,
                "name": m["name"],
                "method": m["method"],
                "features": m.get("features", "-")
                if m["method"] not in ("uniform", "linear")
                else "-",
                "args": m.get("args") or {},
                "pairs": len(pairs),
                "seconds": round(time.perf_counter() - t0, 2),
                "metrics": _summary(errors),
            }
            rows.append(row)
            log(
                f"{task} / {m['name']}: MAE {row['metrics']['mae_ms']:.1f} ms over {len(errors)} boundaries ({row['seconds']:.1f} s)"
            )
            write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    board = _leaderboard(rows)
    clip_board, clip_section = "", ""
    if clips_cfg:
        from alignfuse.bench.clip_clause import run_clip_clause
        from alignfuse.data.clips import load_clips

        t0 = time.perf_counter()
        clips = load_clips(**(clips_cfg.get("data") or {}))
        log(
            "data clips: "
            + ", ".join(f"{k} {len(v)}" for k, v in clips.splits.items())
            + f" ({time.perf_counter() - t0:.1f} s)"
        )
        clip_rows, clip_examples = run_clip_clause(
            clips["train"],
            clips["test"],
            clips.vocabulary(),
            list(clips_cfg.get("methods") or []),
            clips_cfg,
            log,
        )
        rows += clip_rows
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        clip_board = _clip_leaderboard(clip_rows)
        _plot_timelines(clips["test"].clips[:4], clip_examples, out / "clip_timelines.png")
        clip_section = (
            f"\n## Clips to clauses\n\n{len(clips['train'])} training and {len(clips['test'])} test clips; "
            "every frame is assigned one of its clip's ordered clauses.\n\n"
            f"{clip_board}\n![timelines](clip_timelines.png)\n"
        )
    (out / "leaderboard.md").write_text(board + ("\n" + clip_board if clip_board else ""))
    src, dst = _pairs(data, "voice_to_voice")[0]
    _plot_path(src, dst, example, hop, out / "alignment_path.png")
    _plot_boundaries(dst, example, data.sentences[dst.sentence], out / "boundaries.png")
    _plot_errors(rows, out / "errors.png")
    (out / "report.md").write_text(
        f"# alignfuse bench: suite `{raw.get('name', 'temporal')}`\n\n{str(raw.get('description', '')).strip()}\n\n"
        f"Machine: {machine()}. Data: {len(data.sentences)} sentences, "
        f"{len(data.utterances)} utterances (espeak-ng), features every {hop:g} ms.\n\n"
        f"## Word-boundary error (ms)\n\n{board}\n![errors](errors.png)\n\n"
        f"## One voice-to-voice pair\n\n{src.voice} at {src.rate} wpm onto {dst.voice} at {dst.rate} wpm: "
        f'"{data.sentences[dst.sentence]}".\n\n![path](alignment_path.png)\n\n![boundaries](boundaries.png)\n'
        + clip_section
    )
    print(board + ("\n" + clip_board if clip_board else ""))
    return rows


def _leaderboard(rows: list[dict[str, Any]]) -> str:
    header = ["task", "method", "features", "MAE ms", "median ms", "within 20 ms"]
    header += ["within 50 ms", "seconds"]
    body = [
        [r["task"], r["name"], r["features"]]
        + [f"{r['metrics'][k]:.1f}" for k in ("mae_ms", "median_ms")]
        + [f"{r['metrics'][k]:.3f}" for k in ("within_20ms", "within_50ms")]
        + [f"{r['seconds']:.1f}"]
        for r in rows
    ]
    return markdown_table(header, body)


def _clip_leaderboard(rows: list[dict[str, Any]]) -> str:
    header = ["method", "frame accuracy", "span IoU", "train s", "localise s"]
    body = [
        [
            r["name"],
            f"{r['metrics']['frame_acc']:.3f}",
            f"{r['metrics']['span_iou']:.3f}",
            f"{r['train_seconds']:.1f}",
            f"{r['seconds']:.2f}",
        ]
        for r in rows
    ]
    return markdown_table(header, body)


def _plot_timelines(clips: list[Any], examples: dict[str, list[np.ndarray]], path: Path) -> None:
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


def _plot_path(
    src: Utterance, dst: Utterance, example: dict[str, Any], hop: float, path: Path
) -> None:
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
    plt = pyplot()
    names = list(dict.fromkeys(r["name"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(TASKS)
    for t, task in enumerate(TASKS):
        vals = [
            next((r["metrics"]["mae_ms"] for r in rows if r["task"] == task and r["name"] == n), 0)
            for n in names
        ]
        ax.bar(np.arange(len(names)) + t * width, vals, width, label=task)
    ax.set_xticks(np.arange(len(names)) + width / 2, names, rotation=20, fontsize=8)
    ax.set(ylabel="mean |boundary error| (ms)", title="word-boundary error by method")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["frame_map", "is_temporal_suite", "normalised", "run_temporal_suite"]
