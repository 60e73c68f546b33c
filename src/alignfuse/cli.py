"""The ``alignfuse`` command line.

alignfuse bench [--suite NAME|FILE] [--out DIR] [overrides ...]
alignfuse train CONFIG [overrides ...] [--out DIR] [--resume]
alignfuse eval RUN_DIR [--splits ...] [--questions FILE --tables FILE]
alignfuse data shapes|clipart --out DIR [--format karpathy|webdataset] [--seed S] ...
alignfuse list [FAMILY]
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignfuse.errors import AlignfuseError


def _cmd_list(args: argparse.Namespace) -> int:
    import alignfuse  # noqa: F401  (registers everything)
    from alignfuse.bench.suite import builtin_suites
    from alignfuse.correlation.methods import METHODS
    from alignfuse.registry import FAMILIES, _first_line, suggest

    def correlation() -> None:  # closed-form estimators: scikit-learn style, no registry
        print("correlation (alignfuse align --method, alignfuse.correlation):")
        from alignfuse.correlation import Procrustes

        for name, cls in sorted({**METHODS, "procrustes": Procrustes}.items()):
            print(f"  {name:<14} {_first_line(cls)}")

    fams = FAMILIES if args.family is None else None
    if fams is None:
        if args.family == "suites":
            for s in builtin_suites():
                print(s)
            return 0
        if args.family == "correlation":
            correlation()
            return 0
        if args.family not in FAMILIES:
            choices = [*FAMILIES, "correlation", "suites"]
            raise AlignfuseError(
                f"unknown family {args.family!r}{suggest(args.family, choices)} "
                f"(families: {', '.join(choices)})"
            )
        fams = {args.family: FAMILIES[args.family]}
    for fam, reg in fams.items():
        print(f"{fam}:")
        if not len(reg):
            print("  (none yet)")
        width = max([14, *(len(e.name) for e in reg.entries())])
        for e in reg.entries():
            print(f"  {e.name:<{width}} {e.summary}")
    if args.family is None:
        correlation()
        print(f"suites:\n  {', '.join(builtin_suites())}")
    return 0


def _clear_out(out: Path) -> None:
    """``--overwrite``: delete a previous run in ``out`` (refused while a process uses it)."""
    import shutil

    from alignfuse.engine.fit import run_lock

    if not out.exists():
        return
    if not out.is_dir():
        raise AlignfuseError(f"--out {out} is a file, not a run folder")
    folders = [out, *(p.parent for p in out.glob("**/.lock"))]
    for folder in folders:
        if (folder / ".lock").exists():
            run_lock(folder).close()  # refuses, naming the process, if one holds it
    shutil.rmtree(out)
    print(f"alignfuse: removed the previous run in {out} (--overwrite)", file=sys.stderr)


def _cmd_bench(args: argparse.Namespace) -> int:
    from alignfuse.bench import load_suite, run_suite

    if args.overwrite:
        _clear_out(Path(args.out) if args.out else Path("runs") / Path(args.suite).stem)
    suite = load_suite(args.suite, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / suite.name
    run_suite(suite, out, progress=None if not args.no_progress else False)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from alignfuse.bench.runner import run_experiment
    from alignfuse.config import load_config
    from alignfuse.distributed import init_from_env
    from alignfuse.engine.fit import Fit
    from alignfuse.tasks import looped, task_type
    from alignfuse.tasks.base import check_task_args

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    if args.overwrite and args.resume:
        raise AlignfuseError("--overwrite and --resume exclude each other")
    if args.overwrite:
        _clear_out(out)
    if not args.resume and (out / "checkpoints" / "latest").exists():
        raise AlignfuseError(
            f"{out} already holds a checkpoint: pass --resume to continue it, --overwrite to "
            "start afresh, or --out elsewhere"
        )
    # under torchrun: rank 0 builds (and caches) the data first, the others then read it
    rank = init_from_env(cfg.train.device)
    try:
        if rank > 0:
            dist.barrier()
        kind = task_type(cfg)
        check_task_args(kind, cfg)  # before the data (which may train frozen towers)
        data = kind.load_data(cfg)
        if rank == 0 and dist.is_initialized():
            dist.barrier()
        progress = None if not args.no_progress else False
        if rank > 0:  # trains its slices; rank 0 evaluates and reports
            Fit(looped(kind(cfg, data, out)), out, progress=False).fit(resume=True)
            return 0
        row, _, _, _ = run_experiment(cfg, data, out, progress=progress)
        print(json.dumps(row["metrics"], indent=1))
        return 0
    finally:
        if dist.is_initialized():
            if dist.get_backend() == "gloo":
                # every rank leaves together: a gloo rank that tore its group down while rank 0
                # was still evaluating aborted once in CI ("terminate called without an active
                # exception"); rank 0's evaluation can take long, hence the long timeout
                dist.monitored_barrier(timeout=datetime.timedelta(days=1))
            dist.destroy_process_group()


def _cmd_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from alignfuse.engine.fit import load_run

    run = Path(args.run_dir)
    if run.suffix in (".yaml", ".yml"):
        return _eval_config(args)
    if args.overrides:
        raise AlignfuseError(
            f"overrides ({args.overrides[0]}, ...) go with a config file, not a run folder"
        )
    fit = load_run(run)
    if args.splits:
        fit.cfg.eval = dataclasses.replace(fit.cfg.eval, splits=list(args.splits))
    if args.questions or args.tables:
        from alignfuse.data.spider import load_spider
        from alignfuse.tasks.schema_linking import SchemaLinkingTask

        if not isinstance(fit.task, SchemaLinkingTask):
            raise AlignfuseError(
                f"--questions / --tables evaluate a schema linker; {run} is a "
                f"{fit.cfg.task.name!r} run"
            )
        if not (args.questions and args.tables):
            raise AlignfuseError(
                "--questions and --tables go together (a Spider-format file and its tables.json)"
            )
        data = load_spider(args.questions, args.tables, args.question_field)
        if data.errors:
            print(
                f"alignfuse: {len(data.errors)} of {len(data.errors) + len(data)} questions "
                f"skipped (first: entry {data.errors[0][0]}: {data.errors[0][1]})",
                file=sys.stderr,
            )
        metrics = fit.task.evaluate_file(fit.model, data)
        out = run / f"eval-{Path(args.questions).stem}.json"
    else:
        metrics, _ = fit.task.evaluate(fit.model)
        out = run / "eval.json"
    out.write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _eval_config(args: argparse.Namespace) -> int:
    """Evaluate the model a config builds, untrained (a pretrained model on a dataset)."""
    import dataclasses

    from alignfuse.config import load_config, save_config
    from alignfuse.engine.fit import Fit
    from alignfuse.tasks import looped, task_type
    from alignfuse.tasks.base import check_task_args

    if args.questions or args.tables:
        raise AlignfuseError("--questions / --tables evaluate a trained run folder, not a config")
    cfg = load_config(args.run_dir, args.overrides)
    if args.splits:
        cfg.eval = dataclasses.replace(cfg.eval, splits=list(args.splits))
    kind = task_type(cfg)
    check_task_args(kind, cfg)
    data = kind.load_data(cfg)
    out = Path(args.out) if args.out else Path("runs") / f"eval-{cfg.name}"
    out.mkdir(parents=True, exist_ok=True)
    fit = Fit(looped(kind(cfg, data, out)), None, progress=False, log=lambda m: None)
    metrics, _ = fit.task.evaluate(fit.model)
    save_config(cfg, out / "config.yaml")
    (out / "eval.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics, indent=1))
    print(f"wrote {out / 'eval.json'} (the model as built: no training)", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from alignfuse.export import export_run

    manifest = export_run(args.run_dir, args.out, args.format)
    for part in ("image", "text"):
        m = manifest[part]
        print(
            f"{part}: {m['file']} (inputs {', '.join(m['inputs'])}; max |diff| vs eager "
            f"{m['max_abs_diff']:.1e})"
        )
    return 0


def _cmd_align(args: argparse.Namespace) -> int:
    from alignfuse.data.twoview import load_twoview_files

    if args.dim < 1:
        raise AlignfuseError(f"--dim must be >= 1, got {args.dim}")
    if not args.reg >= 0:
        raise AlignfuseError(f"--reg must be >= 0, got {args.reg}")
    data = load_twoview_files(args.x, args.y, args.labels, test_fraction=args.test_fraction)
    train, test = data["train"], data["test"]
    cols = min(train.x.shape[1], train.y.shape[1])
    if args.method not in ("kcca", "dcca", "dccae", "procrustes") and args.dim > cols:
        raise AlignfuseError(
            f"--dim {args.dim} exceeds the views' columns ({train.x.shape[1]} and "
            f"{train.y.shape[1]}): at most {cols}"
        )
    try:
        return _fit_align(args, data, train, test)
    except ValueError as err:
        if isinstance(err, AlignfuseError):
            raise
        raise AlignfuseError(f"align --method {args.method}: {err}") from None


def _fit_align(args: argparse.Namespace, data: Any, train: Any, test: Any) -> int:
    import numpy as np

    from alignfuse.correlation import SCM, Procrustes, save_estimator
    from alignfuse.correlation.evaluate import evaluate_two_view
    from alignfuse.correlation.methods import make_estimator

    if args.method == "procrustes":
        est = Procrustes(scaling=True).fit(train.x, train.y)
        pred = np.asarray(est.transform(test.x))
        a = pred / np.linalg.norm(pred, axis=1, keepdims=True).clip(1e-12)
        b = test.y / np.linalg.norm(test.y, axis=1, keepdims=True).clip(1e-12)
        ranks = (a @ b.T >= np.sum(a * b, 1)[:, None]).sum(1)
        print(
            f"held-out R^2 {est.score(test.x, test.y):.4f}; x->y retrieval "
            + ", ".join(f"R@{k} {np.mean(ranks <= k):.3f}" for k in (1, 5, 10))
        )
    else:
        reg: dict[str, float] = {}
        if args.method in ("cca", "kcca", "scm"):
            reg = {"reg_x": args.reg, "reg_y": args.reg}
        elif args.method in ("dcca", "dccae"):
            reg = {"reg": args.reg}
        est = make_estimator(args.method, args.dim, reg)
        if isinstance(est, SCM):
            if train.labels is None:
                raise AlignfuseError("--method scm needs --labels")
            est.fit(train.x, train.y, train.labels)
        else:
            est.fit(train.x, train.y)
        corr = np.abs(np.asarray(est.score(test.x, test.y)))
        print(f"held-out canonical correlations ({len(test)} rows): {np.round(corr, 4).tolist()}")
        metrics = evaluate_two_view(est, data, args.dim)
        print(", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    out = Path(args.out) if args.out else Path("runs") / f"align-{args.method}"
    save_estimator(est, out)
    print(f"saved {out / 'model.safetensors'} and {out / 'model.json'}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from alignfuse.data import ambiguity, export_captions, export_webdataset, load_shapes

    if args.dataset == "clipart":
        from alignfuse.data.clipart import DEFAULT_ROOT, load_clipart

        data = load_clipart(
            root=args.root or DEFAULT_ROOT,
            image_size=args.image_size or 128,
            n_val=args.n_val or 500,
            n_test=args.n_test or 1000,
            seed=args.seed,
        )
    else:
        data = load_shapes(
            n_train=args.n_train,
            n_val=args.n_val or 1000,
            n_test=args.n_test or 1000,
            n_winoground=args.n_winoground,
            image_size=args.image_size or 64,
            seed=args.seed,
        )
    counts = ", ".join(f"{k}: {len(v)}" for k, v in data.splits.items())
    if args.format == "webdataset":
        shards = export_webdataset(data, args.out, shard_size=args.shard_size)
        print(f"wrote {len(shards)} shards to {args.out} ({counts} images)")
    else:
        folder = export_captions(data, args.out)
        print(f"wrote {folder} ({counts} images)")
    if args.dataset != "shapes":
        return 0
    amb = ambiguity(data["test"])
    print(
        f"test ambiguity: {100 * amb['share_ambiguous']:.1f}% of captions fit several images; "
        f"best t2i R@1 {100 * amb['ceiling_r1_t2i']:.1f}%, best i2t R@1 {100 * amb['ceiling_r1_i2t']:.1f}%"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``alignfuse`` command."""
    p = argparse.ArgumentParser(prog="alignfuse", description="Multimodal alignment and fusion.")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("bench", help="run a benchmark suite and write a leaderboard and report")
    b.add_argument("--suite", default="default", help="built-in suite name or a suite YAML file")
    b.add_argument("--out", help="run folder (default runs/<suite>)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.add_argument("--overwrite", action="store_true", help="delete a previous run in --out first")
    b.add_argument("overrides", nargs="*", help="dotted overrides for every experiment")
    b.set_defaults(func=_cmd_bench)

    t = sub.add_parser("train", help="train one experiment from a YAML config")
    t.add_argument("config", help="experiment YAML file")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    t.add_argument("--out", help="run folder (default runs/<name>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="delete a previous run in --out first")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser(
        "eval",
        help="evaluate the last checkpoint of a run folder, or the model a config builds "
        "(untrained: a pretrained model on a dataset)",
    )
    e.add_argument("run_dir", help="a run folder, or an experiment YAML file")
    e.add_argument("overrides", nargs="*", help="dotted overrides (with a YAML file)")
    e.add_argument("--out", help="with a YAML file: where eval.json goes (default runs/eval-NAME)")
    e.add_argument("--splits", nargs="*", help="splits to evaluate (default: the config's)")
    e.add_argument("--questions", help="schema linking: a Spider-format questions file")
    e.add_argument("--tables", help="schema linking: the tables.json of its databases")
    e.add_argument(
        "--question-field",
        help="schema linking: question, SpiderQuestion or SpiderSynQuestion (default: auto)",
    )
    e.set_defaults(func=_cmd_eval)

    x = sub.add_parser("export", help="export a trained dual encoder's towers (ONNX, TorchScript)")
    x.add_argument("run_dir")
    x.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    x.add_argument("--out", help="folder for the graphs (default RUN/export-FORMAT)")
    x.set_defaults(func=_cmd_export)

    al = sub.add_parser("align", help="fit a correlation method on two views (.npy / .npz)")
    al.add_argument("x", help="view 1 (.npy), or an .npz holding X, Y (and labels)")
    al.add_argument("y", nargs="?", help="view 2 (.npy)")
    al.add_argument(
        "--method",
        default="cca",
        choices=["cca", "kcca", "scm", "procrustes", "pls", "dcca", "dccae"],
    )
    al.add_argument("--dim", type=int, default=2, help="number of components")
    al.add_argument("--reg", type=float, default=1e-3, help="ridge per view")
    al.add_argument("--labels", help="class labels (.npy), needed by scm")
    al.add_argument("--test-fraction", type=float, default=0.2)
    al.add_argument("--out", help="folder for the fitted model (default runs/align-METHOD)")
    al.set_defaults(func=_cmd_align)

    d = sub.add_parser("data", help="generate and export built-in data")
    d.add_argument("dataset", choices=["shapes", "clipart"])
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument(
        "--format",
        choices=["karpathy", "webdataset"],
        default="karpathy",
        help="PNG images + Karpathy-split JSON (default), or WebDataset tar shards per split",
    )
    d.add_argument("--shard-size", type=int, default=1000, help="samples per WebDataset shard")
    d.add_argument("--n-train", type=int, default=10_000)
    d.add_argument(
        "--n-val", type=int, help="validation images (default: shapes 1000, clipart 500)"
    )
    d.add_argument("--n-test", type=int, help="test images (default 1000)")
    d.add_argument("--n-winoground", type=int, default=200)
    d.add_argument("--image-size", type=int, help="image side (default: shapes 64, clipart 128)")
    d.add_argument(
        "--root", help="clipart: the openclipart folder (default /usr/share/openclipart)"
    )
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_data)

    ls = sub.add_parser("list", help="list registered components")
    ls.add_argument(
        "family",
        nargs="?",
        help="losses, fusion, interactions, encoders, models, datasets, metrics, tasks, "
        "correlation, suites",
    )
    ls.set_defaults(func=_cmd_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (2 with a one-line message on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (AlignfuseError, FileNotFoundError, ImportError) as err:
        print(f"alignfuse: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "alignfuse: interrupted; to continue from the last checkpoint run the same command "
            "again (bench), with --resume added (train)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
