"""The report of a suite run, one writer for every task: ``report.md`` (title, description,
machine, one leaderboard per task, the task's own sections, notes) and ``leaderboard.md``; and
the small helpers the tasks' sections share (markdown tables, the headless pyplot, the machine
line)."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from alignfuse._io import write_text_atomic


def processor() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else ``platform``): trained
    figures depend on it, through the kernels its instruction set selects."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def machine() -> str:
    """``platform, processor, N CPU cores`` for the reports' machine line."""
    return f"{platform.platform()}, {processor()}, {os.cpu_count()} CPU cores"


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (benchmarks run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None
) -> str:
    """A markdown table (cells already formatted), after an optional title paragraph."""
    lines = [f"{title}\n"] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metrics_table(rows: list[dict[str, Any]], skip: Sequence[str] = ()) -> str:
    """A table of every metric of the finished rows (the union over rows, in order of first
    appearance; 4 significant digits), with the training time; a skipped row says why."""
    keys: list[str] = []
    for r in rows:
        if r.get("status") == "ok":
            keys += [k for k in r["metrics"] if k not in keys and k not in skip]
    return rows_table(
        rows,
        ["experiment", *keys, "train s"],
        lambda r: [
            r["name"],
            *(f"{r['metrics'][k]:.4g}" if k in r["metrics"] else "-" for k in keys),
            f"{r.get('train_seconds', 0.0):.2f}",
        ],
    )


def skipped_cells(row: dict[str, Any], width: int) -> list[str]:
    """A leaderboard row for a skipped experiment: its name and why, ``width`` cells."""
    return [row["name"], f"skipped: {row.get('reason', '')}", *[""] * (width - 2)]


def rows_table(
    rows: list[dict[str, Any]],
    head: Sequence[str],
    cells: Callable[[dict[str, Any]], Sequence[Any]],
    *,
    order: Callable[[dict[str, Any]], Any] | None = None,
    title: str | None = None,
) -> str:
    """A leaderboard: ``cells(row)`` for every finished row (sorted by ``order`` if given),
    then a line naming each skipped experiment and why."""
    done = [r for r in rows if r.get("status") == "ok"]
    if order is not None:
        done.sort(key=order)
    body = [list(cells(r)) for r in done]
    body += [skipped_cells(r, len(head)) for r in rows if r.get("status") != "ok"]
    return markdown_table(head, body, title)


def leaderboards(groups: Sequence[tuple[Any, list[dict[str, Any]]]]) -> str:
    """``leaderboard.md``: each task's table; headed by the task's name when the suite runs
    more than one task."""
    if len(groups) == 1:
        kind, rows = groups[0]
        return str(kind.leaderboard(rows))
    return "\n".join(f"## {kind.name}\n\n{kind.leaderboard(rows)}" for kind, rows in groups)


def write_suite_report(
    suite: Any,
    groups: Sequence[tuple[Any, list[dict[str, Any]], Any, dict[str, Any]]],
    out: Path,
    seconds: float,
) -> Path:
    """Write ``out/report.md``: the suite's title, description and machine, then for each
    task (``(task class, its rows, its data, its artefacts)``, in the suite's order) its
    leaderboard and its own sections, then the notes every suite shares."""
    parts = [
        f"# alignfuse bench: suite `{suite.name}`",
        "",
        str(suite.description),
        "",
        f"Machine: {machine()}, torch {torch.__version__}. Whole run: {seconds:.0f} s.",
        "",
    ]
    for kind, rows, data, artefacts in groups:
        title = f"## Leaderboard ({kind.leaderboard_caption})"
        if len(groups) > 1:
            title = f"## {kind.name}: leaderboard ({kind.leaderboard_caption})"
        parts += [title, "", kind.leaderboard(rows)]
        parts += [s.rstrip("\n") + "\n" for s in kind.report(rows, out, data, artefacts)]
    parts += [
        "## Notes",
        "",
        "- Each experiment's resolved config is in `experiments/<name>/config.yaml` and its "
        "results row (metrics, timings, the hash of the config) in `results.jsonl`; "
        "re-running the command reuses a finished experiment whose config is unchanged.",
        "",
    ]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(parts))
    return path


def grouped_bars(
    path: Path,
    names: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    ylabel: str,
    title: str,
    size: tuple[float, float] = (8, 3.5),
    rotation: int = 20,
) -> None:
    """A grouped bar chart (one group per name, one bar per series) saved as a PNG."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=size)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, list(values), width, label=label)
    ax.set_xticks(x, list(names), rotation=rotation, fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
