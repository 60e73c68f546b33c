"""The ``correlation`` benchmark: every correlation method on two-view data, one protocol."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignfuse._io import write_text_atomic
from alignfuse.bench.report import machine, markdown_table, pyplot
from alignfuse.bench.suite import read_checked_suite, suite_kind
from alignfuse.correlation import SCM
from alignfuse.correlation.evaluate import evaluate_two_view
from alignfuse.correlation.methods import make_estimator
from alignfuse.registry import DATASETS

KEYS = {"name", "kind", "description", "data", "components", "methods"}


def is_correlation_suite(name_or_path: str) -> bool:
    """Whether a suite (built-in name or YAML path) is of kind ``correlation``."""
    return suite_kind(name_or_path) == "correlation"


def run_correlation_suite(
    name_or_path: str, out: str | Path, log: Any = None
) -> list[dict[str, Any]]:
    """Fit and evaluate every method of the suite; write results, leaderboard and report."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    raw = read_checked_suite(name_or_path, KEYS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = raw.get("data") or {}
    t0 = time.perf_counter()
    data = DATASETS.create(data_cfg.get("name", "digits_twoview"), **(data_cfg.get("args") or {}))
    log(
        f"data {data.name}: "
        + ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
        + f" ({time.perf_counter() - t0:.1f} s)"
    )
    k = int(raw.get("components", 10))
    train, test = data["train"], data["test"]
    rows, curves = [], {}
    for i, m in enumerate(raw.get("methods") or []):
        est = make_estimator(m["method"], k, m.get("args") or {})
        log(f"[{i + 1}/{len(raw['methods'])}] {m['name']}: fitting {est!r} ...")
        t0 = time.perf_counter()
        if isinstance(est, SCM):
            est.fit(train.x, train.y, train.labels)
        else:
            est.fit(train.x, train.y)
        fit_s = time.perf_counter() - t0
        metrics = evaluate_two_view(est, data, k)
        curves[m["name"]] = np.abs(np.asarray(est.score(test.x, test.y))).tolist()
        rows.append(
            {
                "name": m["name"],
                "method": m["method"],
                "args": m.get("args") or {},
                "fit_seconds": round(fit_s, 3),
                "metrics": metrics,
            }
        )
        log(
            f"[{i + 1}/{len(raw['methods'])}] {m['name']}: "
            + ", ".join(f"{a} {b:.3f}" for a, b in metrics.items())
            + f", fit {fit_s:.2f} s"
        )
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    board = _leaderboard(rows)
    (out / "leaderboard.md").write_text(board)
    _plot(curves, out / "correlations.png")
    (out / "report.md").write_text(
        f"# alignfuse bench: suite `{raw.get('name', 'correlation')}`\n\n{str(raw.get('description', '')).strip()}\n\n"
        f"Machine: {machine()}.\n\n## Leaderboard (test split)\n\n{board}\n"
        "Cross-view retrieval asks for the *paired* view-2 row, but the views share only the class "
        "(about a tenth of the test rows are equally right), so its ceiling is low by construction.\n\n"
        "## Canonical correlation per component (test)\n\n![correlations](correlations.png)\n"
    )
    print(board)
    return rows


def _leaderboard(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("corr sum", "corr_sum", "{:.3f}"),
        ("probe acc", "probe_acc", "{:.3f}"),
        ("NMI", "nmi", "{:.3f}"),
        ("x2y R@1", "x2y_r1", "{:.3f}"),
        ("x2y R@5", "x2y_r5", "{:.3f}"),
        ("x2y R@10", "x2y_r10", "{:.3f}"),
    ]
    body = [
        [r["name"]]
        + [fmt.format(r["metrics"][key]) if key in r["metrics"] else "-" for _, key, fmt in cols]
        + [f"{r['fit_seconds']:.2f}"]
        for r in rows
    ]
    return markdown_table(["method", *(c[0] for c in cols), "fit s"], body)


def _plot(curves: dict[str, list[float]], path: Path) -> None:
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
