"""Run a suite: train and evaluate each experiment, write results, leaderboard and report.

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
from alignfuse.data.base import ImageTextData
from alignfuse.engine.evaluate import evaluate
from alignfuse.engine.trainer import Trainer, load_data

EXTRAS: dict[str, Callable[[], bool]] = {}


def _extra_available(name: str) -> bool:
    if name == "minilm":
        from alignfuse.encoders.pretrained import minilm_available

        return minilm_available()
    return False


def run_experiment(
    cfg: ExperimentConfig,
    data: ImageTextData,
    run_dir: Path,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Trainer, dict[str, torch.Tensor]]:
    """Train (resuming if possible) and evaluate one experiment; return its results row."""
    trainer = Trainer(cfg, data, run_dir, progress=progress, log=log)
    trainer.fit(resume=True)
    metrics, sims = evaluate(
        trainer.model, data, cfg.eval.splits, cfg.eval.batch_size, cfg.eval.retrieval_captioning
    )
    n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    n_params += sum(p.numel() for p in trainer.loss_fn.parameters() if p.requires_grad)
    frozen = sum(  # a momentum teacher (ALBEF's EMA copy) is not a frozen tower
        p.numel()
        for n, p in trainer.model.named_parameters()
        if not p.requires_grad and not n.startswith("momentum_model.")
    )
    frozen += sum(int(getattr(m, "frozen_params", 0)) for m in trainer.model.modules())
    row = {
        "name": cfg.name,
        "status": "ok",
        "config_hash": config_hash(cfg),
        "metrics": metrics,
        "train_seconds": round(trainer.elapsed(), 2),
        "trainable_params": n_params,
        "frozen_params": frozen,
        "steps": trainer.step,
        "history": {"train": trainer.history.train, "val": trainer.history.val},
        "config": to_dict(cfg),
    }
    write_text_atomic(run_dir / "metrics.json", json.dumps(row, indent=1))
    return row, trainer, sims


def run_suite(
    suite: Suite,
    out: str | Path,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every experiment of ``suite`` into ``out``; return the result rows."""
    from alignfuse.bench.report import write_leaderboard, write_report

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datasets: dict[str, ImageTextData] = {}
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
            datasets[key] = load_data(cfg)
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
        row, trainer, sims = run_experiment(cfg, data, run_dir, progress, log)
        rows.append(row)
        artefacts[cfg.name] = (trainer, sims, data)
        m = row["metrics"]
        log(
            f"{header}: test rsum {m.get('test/rsum', float('nan')):.1f}, "
            f"t2i R@10 {m.get('test/t2i_r10', float('nan')):.3f}, "
            f"train {row['train_seconds']:.0f} s"
        )
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    total = time.perf_counter() - t_suite
    leaderboard = write_leaderboard(rows, out / "leaderboard.md")
    first_data = next(iter(datasets.values()), None)
    write_report(suite, rows, out, first_data, artefacts, total)
    print(leaderboard)
    log(f"suite {suite.name} finished in {total:.0f} s; report: {out / 'report.md'}")
    return rows
