"""Run a suite: train and evaluate each experiment with its task through the one training
loop, write results, leaderboard and report.

``runs/<name>/`` receives ``results.jsonl`` (one row per experiment with the hash of its
resolved config), ``leaderboard.md``, ``report.md`` with PNG plots, and one folder per
experiment (config, vocabulary, checkpoints, history). Re-running the same command resumes:
a finished experiment whose config hash is unchanged is not trained again, an interrupted
one continues from its last checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from alignfuse._io import write_text_atomic
from alignfuse.bench.report import leaderboards, write_suite_report
from alignfuse.bench.suite import Suite
from alignfuse.config import ExperimentConfig, config_hash, to_dict
from alignfuse.encoders.pretrained import FrozenSentenceEncoder, minilm_available
from alignfuse.engine.fit import Fit
from alignfuse.tasks import task_type
from alignfuse.tasks.base import EstimatorTask, Task, check_task_args


def _extra_available(name: str) -> bool:
    from alignfuse.encoders.efficientnet import efficientnet_available

    checks = {"minilm": minilm_available, "images": efficientnet_available}
    return name in checks and checks[name]()


def _frozen_params(model: torch.nn.Module) -> int:
    """Parameters of frozen towers: a momentum teacher (ALBEF's EMA copy) is not one."""
    frozen = sum(
        p.numel()
        for n, p in model.named_parameters()
        if not p.requires_grad and not n.startswith("momentum_model.")
    )
    return frozen + sum(
        int(m.frozen_params) for m in model.modules() if isinstance(m, FrozenSentenceEncoder)
    )


def run_experiment(
    cfg: ExperimentConfig,
    data: Any,
    run_dir: Path,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Fit | None, Any, Task | EstimatorTask]:
    """Train (resuming if possible) and evaluate one experiment with its task; return its
    results row, the finished loop (``None`` for a task the loop does not train), the task's
    artefacts for the report and the task."""
    task = task_type(cfg)(cfg, data, run_dir)
    if isinstance(task, Task):
        loop = Fit(task, run_dir, progress=progress, log=log)
        loop.fit(resume=True)
        t0 = time.perf_counter()
        metrics, artefacts = task.evaluate(loop.model)
        eval_seconds = time.perf_counter() - t0
        model, loss_fn = loop.model, loop.loss_fn
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_params += sum(p.numel() for p in loss_fn.parameters() if p.requires_grad)
        h = loop.history
        trained: dict[str, Any] = {
            "train_seconds": round(loop.train_seconds, 2),  # training only, across resumptions
            "eval_seconds": round(eval_seconds, 2),
            "precision": loop.precision,  # train.precision as resolved (auto: bf16 or fp32)
            "trainable_params": n_params,
            "frozen_params": _frozen_params(model),
            "steps": loop.step,
            "history": {"train": h.train, "val": h.val, "epochs": h.epochs},
        }
        fit: Fit | None = loop
    elif isinstance(task, EstimatorTask):
        fit = None
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        task.fit(progress=progress is not False)
        fit_seconds = time.perf_counter() - t0
        task.save(run_dir)
        t0 = time.perf_counter()
        metrics, artefacts = task.evaluate()
        trained = {
            "train_seconds": round(fit_seconds, 3),
            "eval_seconds": round(time.perf_counter() - t0, 3),
            "precision": "fp32",
            "steps": 0,
            "history": {"train": [], "val": [], "epochs": []},
        }
    else:  # pragma: no cover - task_type checks the factory; a factory may still misbehave
        raise TypeError(f"task {cfg.task.name!r} built {type(task).__name__}, not a task")
    row = {
        "name": cfg.name,
        "status": "ok",
        "config_hash": config_hash(cfg),
        "metrics": metrics,
        **trained,
        "config": to_dict(cfg),
    }
    write_text_atomic(run_dir / "metrics.json", json.dumps(row, indent=1))
    return row, fit, artefacts, task


def run_suite(
    suite: Suite,
    out: str | Path,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every experiment of ``suite`` into ``out``; return the result rows.

    A suite may run several tasks (the ``temporal`` suite: word boundaries in speech, then
    clauses in clips); the leaderboard and the report hold one table per task, in the order
    the suite first names them."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    kinds = {exp.config.task.name: task_type(exp.config) for exp in suite.experiments}
    for exp in suite.experiments:  # every experiment's task arguments, before any data
        check_task_args(kinds[exp.config.task.name], exp.config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    artefacts: dict[str, Any] = {}
    t_suite = time.perf_counter()
    for i, exp in enumerate(suite.experiments):
        cfg = exp.config
        kind = kinds[cfg.task.name]
        run_dir = out / "experiments" / cfg.name
        header = f"[{i + 1}/{len(suite.experiments)}] {cfg.name}"
        missing = [r for r in exp.requires if not _extra_available(r)]
        if missing:
            reason = f"needs the extra(s) {', '.join(missing)}: pip install 'alignfuse[{','.join(missing)}]'"
            log(f"{header}: skipped ({reason})")
            rows.append(
                {
                    "name": cfg.name,
                    "status": "skipped",
                    "reason": reason,
                    "config_hash": config_hash(cfg),
                    "config": to_dict(cfg),
                }
            )
            continue
        # what load_data may read: the task (its name and arguments) and the data section
        key = json.dumps([cfg.task.name, cfg.task.args, to_dict(cfg.data)], sort_keys=True)
        if key not in datasets:
            log(f"{header}: preparing dataset {cfg.data.name} ...")
            t0 = time.perf_counter()
            datasets[key] = kind.load_data(cfg)
            log(f"{header}: dataset ready in {time.perf_counter() - t0:.1f} s")
        data = datasets[key]
        done = run_dir / "metrics.json"
        if done.is_file():
            prev = json.loads(done.read_text())
            if prev.get("config_hash") == config_hash(cfg) and prev.get("status") == "ok":
                log(f"{header}: already done (config {prev['config_hash']}), reusing its results")
                rows.append(prev)
                artefacts[cfg.name] = None
                continue
        log(f"{header}: training ...")
        row, fit, art, task = run_experiment(cfg, data, run_dir, progress, log)
        rows.append(row)
        artefacts[cfg.name] = (fit, art, data)
        log(
            f"{header}: {task.headline(row['metrics'])}, "
            f"train {row['train_seconds']:.0f} s ({row['precision']})"
        )
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    total = time.perf_counter() - t_suite
    groups = []
    for name, kind in kinds.items():
        names = {e.config.name for e in suite.experiments if e.config.task.name == name}
        mine = [r for r in rows if r["name"] in names]
        first = next((d for k, d in datasets.items() if json.loads(k)[0] == name), None)
        groups.append((kind, mine, first, {n: a for n, a in artefacts.items() if n in names}))
    board = leaderboards([(g[0], g[1]) for g in groups])
    write_text_atomic(out / "leaderboard.md", board)
    write_suite_report(suite, groups, out, total)
    print(board)
    log(f"suite {suite.name} finished in {total:.0f} s; report: {out / 'report.md'}")
    return rows
