"""The ``mvae`` benchmark: the multimodal VAE (Wu & Goodman 2018) on three modalities of the
two-view digits (a rotated digit, another noisy image of the same class, the label), trained
with different sub-sampled ELBOs and evaluated as in the paper and its successors: inference
of the label from each subset of images, coherence of what each subset generates (judged by
a linear probe trained on real images) and importance-weighted log-likelihoods."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignfuse._io import write_text_atomic
from alignfuse.bench.report import machine, markdown_table, pyplot
from alignfuse.bench.suite import check_keys, read_checked_suite, suite_kind
from alignfuse.data.twoview import TwoViewSplit
from alignfuse.errors import ConfigError
from alignfuse.models.mvae import MVAE, train_mvae
from alignfuse.registry import DATASETS

KEYS = {"name", "kind", "description", "data", "model", "train", "eval", "experiments"}
MODEL_KEYS = {"latent", "hidden", "weights", "beta", "subsets", "random_subsets", "aggregation"}
TRAIN_KEYS = {"epochs", "batch_size", "lr", "anneal_epochs", "seed"}
EVAL_KEYS = {"samples", "seed"}
LIKELIHOODS = {"rotated": "bernoulli", "noisy": "bernoulli", "label": "categorical"}


def is_mvae_suite(name_or_path: str) -> bool:
    """Whether a suite (built-in name or YAML path) is of kind ``mvae``."""
    return suite_kind(name_or_path) == "mvae"


def modalities(split: TwoViewSplit) -> dict[str, torch.Tensor]:
    """The three modalities of a two-view split: ``rotated`` (view 1), ``noisy`` (view 2) and
    ``label``, as float32 pixels in [0, 1] and class indices."""
    if split.labels is None:
        raise ConfigError(f"the mvae suite needs labelled data; split {split.name!r} has none")
    for v, arr in (("X", split.x), ("Y", split.y)):
        if arr.min() < 0 or arr.max() > 1:
            raise ConfigError(f"split {split.name!r}: {v} must hold pixels in [0, 1] (bernoulli)")
    return {
        "rotated": torch.as_tensor(split.x, dtype=torch.float32),
        "noisy": torch.as_tensor(split.y, dtype=torch.float32),
        "label": torch.as_tensor(split.labels, dtype=torch.int64),
    }


def fit_probes(train: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A logistic-regression classifier of the label per image modality, on real images."""
    from sklearn.linear_model import LogisticRegression

    y = train["label"].numpy()
    return {
        m: LogisticRegression(max_iter=2000, C=1.0).fit(train[m].numpy(), y)
        for m in ("rotated", "noisy")
    }


def evaluate_mvae(
    model: MVAE, test: dict[str, torch.Tensor], probes: dict[str, Any], samples: int, seed: int = 0
) -> dict[str, float]:
    """The suite's metrics on ``test`` (see the report's column notes)."""
    g = torch.Generator().manual_seed(seed)
    y = test["label"]
    out: dict[str, float] = {}
    images = {"rotated": test["rotated"], "noisy": test["noisy"]}
    for name, given in (
        ("rotated", {"rotated": images["rotated"]}),
        ("noisy", {"noisy": images["noisy"]}),
        ("both", images),
    ):
        pred = model.predict(given, "label").argmax(1)
        out[f"label_from_{name}"] = float((pred == y).float().mean())
    for target, given_name, given in (
        ("rotated", "label", {"label": y}),
        ("noisy", "label", {"label": y}),
        ("rotated", "noisy", {"noisy": images["noisy"]}),
    ):
        gen = model.sample(target, given, generator=g).cpu().numpy()
        out[f"{target}_from_{given_name}"] = float(
            (probes[target].predict(gen) == y.numpy()).mean()
        )
    post = model.class_log_posterior({"rotated": images["rotated"]}, "label", samples, g)
    out["bayes_label_from_rotated"] = float((post.argmax(1) == y).float().mean())
    out["nll_label_from_rotated"] = -float(post.gather(1, y[:, None]).mean())
    out["nll_joint"] = -float(model.log_marginal(test, samples, g).mean())
    return out


def run_mvae_suite(name_or_path: str, out: str | Path, log: Any = None) -> list[dict[str, Any]]:
    """Train and evaluate every experiment of the suite; write results, leaderboard, report.
    Each experiment checkpoints every epoch under ``out/<name>/`` and resumes from there."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    raw = read_checked_suite(name_or_path, KEYS)
    for key, allowed in (("model", MODEL_KEYS), ("train", TRAIN_KEYS), ("eval", EVAL_KEYS)):
        check_keys(raw.get(key) or {}, allowed, key)
    experiments = raw.get("experiments") or []
    if not experiments:
        raise ConfigError("the mvae suite lists no experiments")
    for exp in experiments:
        if not isinstance(exp, dict) or "name" not in exp:
            raise ConfigError("each mvae experiment must be a mapping with a name")
        check_keys(
            {k: v for k, v in exp.items() if k != "name"}, MODEL_KEYS | TRAIN_KEYS, "experiment"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data_cfg = raw.get("data") or {}
    data = DATASETS.create(data_cfg.get("name", "digits_twoview"), **(data_cfg.get("args") or {}))
    train, test = modalities(data["train"]), modalities(data["test"])
    n_classes = int(max(train["label"].max(), test["label"].max())) + 1
    dims = {
        "rotated": train["rotated"].shape[1],
        "noisy": train["noisy"].shape[1],
        "label": n_classes,
    }
    log(f"data {data.name}: train {len(train['label'])}, test {len(test['label'])} rows")
    probes = fit_probes(train)
    from sklearn.metrics import log_loss

    ev = raw.get("eval") or {}
    samples, eval_seed = int(ev.get("samples", 500)), int(ev.get("seed", 0))
    reference = {
        "label_from_rotated": float(
            probes["rotated"].score(test["rotated"].numpy(), test["label"].numpy())
        ),
        "label_from_noisy": float(
            probes["noisy"].score(test["noisy"].numpy(), test["label"].numpy())
        ),
        "nll_label_from_rotated": float(
            log_loss(
                test["label"].numpy(),
                probes["rotated"].predict_proba(test["rotated"].numpy()),
                labels=probes["rotated"].classes_,
            )
        ),
    }
    rows: list[dict[str, Any]] = []
    generated: dict[str, np.ndarray] = {}
    crossed: dict[str, np.ndarray] = {}
    # the first test row of each class: its noisy view, translated to the rotated one
    classes = sorted(set(test["label"].tolist()))
    firsts = torch.tensor([int((test["label"] == c).nonzero()[0]) for c in classes])
    side = math.isqrt(dims["rotated"])
    square = side * side == dims["rotated"] == dims["noisy"]
    for i, exp in enumerate(experiments):
        margs = {**(raw.get("model") or {}), **{k: v for k, v in exp.items() if k in MODEL_KEYS}}
        targs = {**(raw.get("train") or {}), **{k: v for k, v in exp.items() if k in TRAIN_KEYS}}
        seed = int(targs.pop("seed", 0))
        torch.manual_seed(seed)
        margs["hidden"] = tuple(margs.get("hidden", (256,)))
        model = MVAE(dims, LIKELIHOODS, **margs)
        tag = f"[{i + 1}/{len(experiments)}] {exp['name']}"
        log(f"{tag}: training ({model.subsets} subsets) ...")
        folder = out / exp["name"]
        timing = folder / "train_seconds.json"  # summed over the runs that trained epochs
        before = json.loads(timing.read_text()) if timing.is_file() else {"seconds": 0.0}
        t0 = time.perf_counter()
        history = train_mvae(model, train, seed=seed, checkpoint_dir=folder, **targs)
        train_s = before["seconds"]
        if before.get("epochs") != len(history):  # not only reloaded
            train_s += time.perf_counter() - t0
        write_text_atomic(timing, json.dumps({"seconds": train_s, "epochs": len(history)}))
        t0 = time.perf_counter()
        metrics = evaluate_mvae(model, test, probes, samples, eval_seed)
        eval_s = time.perf_counter() - t0
        if square:  # image grids: samples per class, and noisy -> rotated translations
            labels = torch.arange(n_classes).repeat_interleave(8)
            g = torch.Generator().manual_seed(1)
            gen = model.sample("rotated", {"label": labels}, generator=g)
            generated[exp["name"]] = gen.cpu().numpy().reshape(n_classes, 8, side, side)
            given = {"noisy": test["noisy"][firsts].repeat_interleave(4, 0)}
            gen = model.sample("rotated", given, generator=g)
            crossed[exp["name"]] = gen.cpu().numpy().reshape(len(firsts), 4, side, side)
        rows.append(
            {
                "name": exp["name"],
                "model": {k: list(v) if isinstance(v, tuple) else v for k, v in margs.items()},
                "train": targs,
                "final_loss": history[-1],
                "train_seconds": round(train_s, 2),
                "eval_seconds": round(eval_s, 2),
                "metrics": metrics,
            }
        )
        log(
            f"{tag}: "
            + ", ".join(f"{a} {b:.3f}" for a, b in metrics.items())
            + f", train {train_s:.1f} s"
        )
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    board = _leaderboard(rows, reference)
    write_text_atomic(out / "leaderboard.md", board)
    if square:
        _plot_generated(generated, out / "generated.png")
        noisy = test["noisy"][firsts].numpy().reshape(len(firsts), 1, side, side)
        _plot_generated({"noisy input": noisy, **crossed}, out / "cross_modal.png")
    write_text_atomic(
        out / "report.md",
        f"# alignfuse bench: suite `{raw.get('name', 'mvae')}`\n\n{str(raw.get('description', '')).strip()}\n\n"
        f"Machine: {machine()}.\n\n## Leaderboard (test split)\n\n{board}\n"
        f"{NOTES}\n## Digits generated from the label alone (rows: 0-9)\n\n![generated](generated.png)\n"
        "\n## Rotated digits generated from a noisy view (`noisy → rot`)\n\nThe first test row of "
        "each class; its noisy view on the left, four samples of each model beside it.\n\n"
        "![cross-modal](cross_modal.png)\n",
    )
    print(board)
    return rows


NOTES = """\
Columns (`S → T`: modality T inferred or generated from the subset S):
- `rot / noisy / both → label`: accuracy of the label decoded from the posterior mean of
  `q(z | x_S)`, S the rotated view, the noisy view or both. The row "pixel probe" is a
  logistic regression on the real test pixels of that view, for reference.
- `label → rot`, `label → noisy`, `noisy → rot` (coherence): images of T generated from S (one
  `z ~ q(z | x_S)` per test row, decoded to pixel means), classified by the logistic-regression
  probe trained on real training images of T; the fraction given the right class.
- `Bayes rot → label`, `NLL rot → label`: the model as a generative classifier,
  `p(label | rotated) = p(label, rotated) / sum_c p(c, rotated)`, each joint an
  importance-weighted (IWAE) estimate with the joint posterior as proposal: its accuracy, and
  `-log p(true label | rotated)` in nats (the probe's for reference).
- `NLL joint`: `-log p(rotated, noisy, label)` in nats (IWAE); with grey levels under a
  Bernoulli likelihood this is a pseudo-likelihood, comparable between rows only.
"""


def _leaderboard(rows: list[dict[str, Any]], reference: dict[str, float]) -> str:
    cols = [
        ("rot → label", "label_from_rotated", "{:.3f}"),
        ("noisy → label", "label_from_noisy", "{:.3f}"),
        ("both → label", "label_from_both", "{:.3f}"),
        ("label → rot", "rotated_from_label", "{:.3f}"),
        ("label → noisy", "noisy_from_label", "{:.3f}"),
        ("noisy → rot", "rotated_from_noisy", "{:.3f}"),
        ("Bayes rot → label", "bayes_label_from_rotated", "{:.3f}"),
        ("NLL rot → label", "nll_label_from_rotated", "{:.3f}"),
        ("NLL joint", "nll_joint", "{:.1f}"),
    ]
    body = [
        [r["name"]]
        + [fmt.format(r["metrics"][key]) for _, key, fmt in cols]
        + [f"{r['train_seconds']:.1f}"]
        for r in rows
    ]
    body.append(
        ["pixel probe"]
        + [f"{reference[key]:.3f}" if key in reference else "-" for _, key, _ in cols]
        + ["-"]
    )
    return markdown_table(["model", *(c[0] for c in cols), "train s"], body)


def _plot_generated(generated: dict[str, np.ndarray], path: Path) -> None:
    plt = pyplot()
    widths = [imgs.shape[1] for imgs in generated.values()]
    fig, axes = plt.subplots(
        1,
        len(generated),
        figsize=(0.4 * sum(widths) + 0.6 * len(widths), 4.2),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, (name, imgs) in zip(axes[0], generated.items(), strict=True):
        classes, per, side = imgs.shape[:3]
        cells = np.pad(imgs, ((0, 0), (0, 0), (1, 1), (1, 1)))  # a blank frame round each
        grid = cells.transpose(0, 2, 1, 3).reshape(classes * (side + 2), per * (side + 2))
        ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(name, fontsize=9, pad=4)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
