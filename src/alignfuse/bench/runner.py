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
from alignfuse.bench.suite import Suite
from alignfuse.config import ExperimentConfig, config_hash, to_dict
from alignfuse.encoders.pretrained import FrozenSentenceEncoder, minilm_available
from alignfuse.engine.fit import Fit
from alignfuse.errors import ConfigError
from alignfuse.tasks import task_type


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
) -> tuple[dict[str, Any], Fit, Any]:
    """Train (resuming if possible) and evaluate one experiment with its task; return its
    results row, the finished loop and the task's artefacts for the report."""
    fit = Fit(task_type(cfg)(cfg, data, run_dir), run_dir, progress=progress, log=log)
    fit.fit(resume=True)
    t0 = time.perf_counter()
    metrics, artefacts = fit.task.evaluate(fit.model)
    eval_seconds = time.perf_counter() - t0
    n_params = sum(p.numel() for p in fit.model.parameters() if p.requires_grad)
    n_params += sum(p.numel() for p in fit.loss_fn.parameters() if p.requires_grad)
    h = fit.history
    row = {
        "name": cfg.name,
        "status": "ok",
        "config_hash": config_hash(cfg),
        "metrics": metrics,
        "train_seconds": round(fit.train_seconds, 2),  # training only, across resumptions
        "eval_seconds": round(eval_seconds, 2),
        "precision": fit.precision,  # train.precision as resolved (auto: bf16 or fp32)
        "trainable_params": n_params,
        "frozen_params": _frozen_params(fit.model),
        "steps": fit.step,
        "history": {"train": h.train, "val": h.val, "epochs": h.epochs},
        "config": to_dict(cfg),
    }
    write_text_atomic(run_dir / "metrics.json", json.dumps(row, indent=1))
    return row, fit, artefacts


def run_suite(
    suite: Suite,
    out: str | Path,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every experiment of ``suite`` into ``out``; return the result rows."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    tasks = sorted({exp.config.task.name for exp in suite.experiments})
    if len(tasks) != 1:
        raise ConfigError(f"suite {suite.name!r} mixes tasks {tasks}: one suite reports one task")
    kind = task_type(suite.experiments[0].config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    artefacts: dict[str, Any] = {}
    t_suite = time.perf_counter()
    for i, exp in enumerate(suite.experiments):
        cfg = exp.config
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
        key = json.dumps(to_dict(cfg.data), sort_keys=True)
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
        row, fit, art = run_experiment(cfg, data, run_dir, progress, log)
        rows.append(row)
        artefacts[cfg.name] = (fit, art, data)
        log(
            f"{header}: {fit.task.headline(row['metrics'])}, "
            f"train {row['train_seconds']:.0f} s ({row['precision']})"
        )
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    total = time.perf_counter() - t_suite
    leaderboard = kind.leaderboard(rows)
    write_text_atomic(out / "leaderboard.md", leaderboard)
    first_data = next(iter(datasets.values()), None)
    kind.write_report(suite, rows, out, first_data, artefacts, total)
    print(leaderboard)
    log(f"suite {suite.name} finished in {total:.0f} s; report: {out / 'report.md'}")
    return rows
