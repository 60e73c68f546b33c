"""The ``image_text`` task's leaderboard and report sections: recalls, embedding diagnostics,
captioning, two-stage retrieval, classification and the modality gap, plots of recall,
training curves and retrieved captions."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignfuse.bench.report import markdown_table, pyplot
from alignfuse.data.base import ImageTextData
from alignfuse.models.protocols import CaptionGenerator

COLUMNS: list[tuple[str, str, str]] = [
    ("i2t R@1", "test/i2t_r1", "pct"),
    ("i2t R@5", "test/i2t_r5", "pct"),
    ("i2t R@10", "test/i2t_r10", "pct"),
    ("t2i R@1", "test/t2i_r1", "pct"),
    ("t2i R@5", "test/t2i_r5", "pct"),
    ("t2i R@10", "test/t2i_r10", "pct"),
    ("rsum", "test/rsum", "num"),
    ("hard-neg acc", "test/hard_negative_acc", "pct"),
    ("wino text", "winoground/wino_text", "pct"),
    ("wino image", "winoground/wino_image", "pct"),
    ("wino group", "winoground/wino_group", "pct"),
    ("test_dk rsum", "test_dk/rsum", "num"),
    ("unseen rsum", "test_unseen/rsum", "num"),
    ("zero-shot top-1", "test/zs_top1", "pct"),
]


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if kind == "pct" else f"{value:.1f}"


def leaderboard_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one row per experiment, recalls in percent."""
    ok = [r for r in rows if r.get("status") == "ok"]
    # a column no experiment measured (no test_dk split, no class labels) is left out
    columns = [c for c in COLUMNS if not ok or any(c[1] in r["metrics"] for r in ok)]
    # the precision column appears when some experiment did not train in float32
    mixed = any(r.get("precision", "fp32") != "fp32" for r in ok)
    head = [
        "model",
        *[c[0] for c in columns],
        "train s",
        *(["precision"] if mixed else []),
        "params",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(
                f"| {r['name']} | skipped: {r.get('reason', '')} |" + " |" * (len(head) - 2)
            )
            continue
        m = r["metrics"]
        cells = [r["name"], *[_fmt(m.get(key), kind) for _, key, kind in columns]]
        params = f"{r['trainable_params'] / 1e6:.2f}M"
        if r.get("frozen_params"):
            params += f" (+{r['frozen_params'] / 1e6:.1f}M frozen)"
        cells += [f"{r['train_seconds']:.0f}", *([r.get("precision", "fp32")] if mixed else [])]
        cells.append(params)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DIAGNOSTICS: list[tuple[str, str]] = [
    ("i2t mAP", "test/i2t_map"),
    ("t2i mAP", "test/t2i_map"),
    ("modality gap", "test/modality_gap"),
    ("alignment", "test/alignment"),
    ("uniformity (image)", "test/uniformity_image"),
    ("uniformity (text)", "test/uniformity_text"),
]


def diagnostics_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of each experiment's test mAP and embedding diagnostics."""
    head = ["model", *[c[0] for c in DIAGNOSTICS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.get("status") != "ok":
            continue
        m = r["metrics"]
        cells = [f"{m[key]:.3f}" if key in m else "-" for _, key in DIAGNOSTICS]
        lines.append("| " + " | ".join([r["name"], *cells]) + " |")
    return "\n".join(lines) + "\n"


TWO_STAGE: list[tuple[str, str]] = [
    ("i2t R@1", "i2t_r1"),
    ("t2i R@1", "t2i_r1"),
    ("t2i R@5", "t2i_r5"),
    ("rsum", "rsum"),
]


def two_stage_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of each two-stage experiment's test retrieval from its embeddings
    alone (``itc_``) and after re-ranking the top k with its fusion."""
    head = ["model", "k"]
    for label, _ in TWO_STAGE:
        head += [f"{label} embeddings", f"{label} re-ranked"]
    body = []
    for r in rows:
        m = r.get("metrics") or {}
        if r.get("status") != "ok" or "test/itc_rsum" not in m:
            continue
        k = m.get("test/rerank_k")  # runs that did not record it: their config
        if k is None:
            k = ((r.get("config") or {}).get("model") or {}).get("args", {}).get("rerank_k", 16)
        cells = [r["name"], str(int(k))]
        for _, key in TWO_STAGE:
            kind = "num" if key == "rsum" else "pct"
            cells += [_fmt(m.get(f"test/itc_{key}"), kind), _fmt(m.get(f"test/{key}"), kind)]
        body.append(cells)
    return markdown_table(head, body)


CAPTIONING: list[tuple[str, str]] = [
    ("BLEU-1", "test/bleu_1"),
    ("BLEU-4", "test/bleu_4"),
    ("ROUGE-L", "test/rouge_l"),
    ("CIDEr-D", "test/cider"),
    ("hard-neg acc", "test/hard_negative_acc"),
    ("wino text", "winoground/wino_text"),
    ("wino image", "winoground/wino_image"),
    ("wino group", "winoground/wino_group"),
]


CLASSIFICATION: list[tuple[str, str]] = [
    ("zero-shot top-1", "test/zs_top1"),
    ("zero-shot top-5", "test/zs_top5"),
    ("zero-shot mean per class", "test/zs_mean_class"),
    ("linear probe", "test/probe_acc"),
    ("unseen: zero-shot top-1", "test_unseen/zs_top1"),
    ("unseen: linear probe", "test_unseen/probe_acc"),
]


def classification_markdown(rows: list[dict[str, Any]]) -> str:
    """Zero-shot and linear-probe accuracy (%) of each experiment, and the modality gap of
    its test embeddings at initialisation and after training."""
    cols = [c for c in CLASSIFICATION if any(c[1] in (r.get("metrics") or {}) for r in rows)]
    head = ["model", *[c[0] for c in cols], "modality gap at init", "after training"]
    body = []
    for r in rows:
        if r.get("status") != "ok":
            continue
        m = r["metrics"]
        cells = [_fmt(m.get(key), "pct") for _, key in cols]
        gaps = [m.get("test/init_modality_gap"), m.get("test/modality_gap")]
        cells += ["-" if g is None else f"{g:.3f}" for g in gaps]
        body.append([r["name"], *cells])
    return markdown_table(head, body)


def _plot_per_class(rows: list[dict[str, Any]], classes: Sequence[str], path: Path) -> bool:
    """Grouped bars: each model's zero-shot accuracy per class on the test split."""
    ok = [r for r in rows if r.get("status") == "ok" and "test/zs_top1" in r["metrics"]]
    shown = [c for c in classes if any(f"test/zs_acc/{c}" in r["metrics"] for r in ok)]
    if not shown:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(16, max(8, 0.6 * len(shown))), 4.5))
    width = 0.8 / len(ok)
    x = np.arange(len(shown))
    for j, r in enumerate(ok):
        acc = [100 * r["metrics"].get(f"test/zs_acc/{c}", np.nan) for c in shown]
        ax.bar(x + j * width - 0.4 + width / 2, acc, width, label=r["name"])
    ax.set_xticks(x)
    ax.set_xticklabels([c.replace("_", " ") for c in shown], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("zero-shot accuracy (%)")
    ax.set_title("Zero-shot classification per class (test split)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def captioning_markdown(rows: list[dict[str, Any]]) -> str:
    """A markdown table of each captioner's test captioning metrics (BLEU and ROUGE-L in %,
    CIDEr-D as the COCO server reports it) and its likelihood-based matching scores."""
    body = [
        [
            r["name"],
            *[
                f"{r['metrics'][key]:.3f}"
                if key == "test/cider"
                else _fmt(r["metrics"].get(key), "pct")
                for _, key in CAPTIONING
            ],
        ]
        for r in rows
        if r.get("status") == "ok" and "test/cider" in (r.get("metrics") or {})
    ]
    return markdown_table(["model", *[c[0] for c in CAPTIONING]], body)


def _plot_captions(model: Any, data: ImageTextData, name: str, path: Path, n: int = 8) -> None:
    """Test images with the model's greedy caption and one reference caption."""
    from alignfuse.engine.evaluate import generate_captions

    split = data["test"]
    was_training = model.training
    model.eval()
    try:
        captions = generate_captions(model, split.images[:n])
    finally:
        model.train(was_training)
    titles = [
        f"model: {textwrap.shorten(captions[i], 60)}\n"
        f"ref: {textwrap.shorten(split.captions[i][0], 60)}"
        for i in range(n)
    ]
    _image_grid(split.images[:n], titles, f"{name}: greedy captions of test images", path)


def _plot_parts(rows: list[dict[str, Any]], path: Path) -> bool:
    """Each part of a composite objective (ITC, ITM, MLM) and the ITM / MLM accuracies in
    training; ``False`` (no file) when no experiment logged parts."""
    parts = [
        r for r in rows if r.get("status") == "ok" and "itm" in (r["history"]["train"] or [{}])[0]
    ]
    if not parts:
        return False
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in parts:
        tr = r["history"]["train"]
        steps = [p["step"] for p in tr]
        for key, ls in (("itc", "-"), ("itm", "--"), ("mlm", ":")):
            if key in tr[0]:
                ax1.plot(steps, [p[key] for p in tr], ls, label=f"{r['name']} {key}")
        for key, ls in (("itm_acc", "--"), ("mlm_acc", ":")):
            if key in tr[0]:
                ax2.plot(steps, [p[key] for p in tr], ls, label=f"{r['name']} {key}")
    ax1.set(xlabel="step", ylabel="loss", title="objective parts")
    ax1.set_yscale("log")
    ax2.set(xlabel="step", ylabel="accuracy in batch", title="ITM / MLM accuracy", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in rows:
        if r.get("status") != "ok":
            continue
        tr = r["history"]["train"]
        if tr:
            ax1.plot([p["step"] for p in tr], [p["loss"] for p in tr], label=r["name"])
        va = [p for p in r["history"]["val"] if "rsum" in p]  # a captioner has no rsum
        if va:
            ax2.plot([p["step"] for p in va], [p["rsum"] for p in va], marker="o", label=r["name"])
    ax1.set(xlabel="step", ylabel="training loss (own objective)", title="training loss")
    ax1.set_yscale("log")
    ax2.set(xlabel="step", ylabel="val rsum", title="validation rsum")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_recall(rows: list[dict[str, Any]], path: Path, ceiling: dict[str, float] | None) -> None:
    plt = pyplot()

    ok = [r for r in rows if r.get("status") == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    ks = [1, 5, 10]
    width = 0.8 / max(1, len(ok))
    for ax, d, title in ((axes[0], "i2t", "image to text"), (axes[1], "t2i", "text to image")):
        for j, r in enumerate(ok):
            vals = [r["metrics"].get(f"test/{d}_r{k}", 0.0) for k in ks]
            ax.bar(np.arange(3) + j * width, vals, width, label=r["name"])
        if ceiling:
            ax.axhline(ceiling[f"ceiling_r1_{d}"], color="k", ls="--", lw=1, label="R@1 ceiling")
        ax.set_xticks(np.arange(3) + width * (len(ok) - 1) / 2, [f"R@{k}" for k in ks])
        ax.set(title=title, ylim=(0, 1))
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("recall (test)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _image_grid(images: np.ndarray, titles: Sequence[str], suptitle: str, path: Path) -> None:
    """Images in rows of 4, each under its (multi-line) title."""
    plt = pyplot()

    n = len(images)
    fig, axes = plt.subplots(n // 4, 4, figsize=(16, 2.6 * (n // 4)))
    for ax, image, title in zip(axes.ravel(), images, titles, strict=False):
        ax.imshow(image, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=7, loc="left")
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_grid(data: ImageTextData, sims: torch.Tensor, name: str, path: Path, n: int = 8) -> bool:
    split = data["test"]
    if split.is_features:  # precomputed features: no pixels to show
        return False
    texts, owner = split.flat_captions()
    titles = []
    shown = np.linspace(0, len(split) - 1, min(n, len(split))).astype(int)  # spread over the split
    for i in shown.tolist():
        top = torch.topk(sims[i], 3).indices.tolist()
        titles.append(
            "\n".join(
                f"{rank}{'+' if owner[t] == i else '-'} " + textwrap.shorten(texts[t], 60)
                for rank, t in enumerate(top, 1)
            )
        )
    suptitle = f"{name}: top-3 captions per test image (+ = the image's own caption)"
    _image_grid(split.images[shown], titles, suptitle, path)
    return True


def report_sections(
    rows: list[dict[str, Any]], out: Path, data: ImageTextData | None, artefacts: dict[str, Any]
) -> list[str]:
    """The sections of ``report.md`` after the leaderboard, their PNG plots written into
    ``out``."""
    from alignfuse.data.shapes import ambiguity

    ceiling = None
    if data is not None and "test" in data.splits and "facts" in data["test"].extras:
        ceiling = ambiguity(data["test"])
    _plot_curves(rows, out / "curves.png")
    _plot_recall(rows, out / "recall.png", ceiling)
    parts = [
        "## Embedding diagnostics (test split)",
        "",
        "Mean average precision both ways; the distance between the centres of the two "
        "modalities' unit embeddings (Liang et al. 2022); alignment, the mean squared distance "
        "of a caption to its image, and uniformity, log E exp(-2 d^2) over pairs of one "
        "modality (Wang & Isola 2020; lower is better for both; about -4 for points spread "
        "uniformly over a high-dimensional sphere).",
        "",
        diagnostics_markdown(rows),
    ]
    if any("test/cider" in (r.get("metrics") or {}) for r in rows):
        parts += [
            "## Captioning (test split)",
            "",
            "Captions (greedy, or beam search for a model with beam_size > 1; a dual "
            "encoder's are retrieved training captions) scored against the test references "
            "(BLEU and ROUGE-L in %, "
            "CIDEr-D as the COCO caption server computes it). A captioner matches images and "
            "captions by the caption's mean log-probability per token given the image: "
            "hard negatives and Winoground use that score.",
            "",
            captioning_markdown(rows),
        ]
    if any("test/itc_rsum" in (r.get("metrics") or {}) for r in rows):
        parts += [
            "## Two-stage retrieval (test split)",
            "",
            "Two-stage models (ALBEF) rank everything by their embeddings, then re-score each "
            "query's top k by their fusion (ITM logit + similarity, the paper's protocol); the "
            "leaderboard shows the re-ranked figures. Recalls in %.",
            "",
            two_stage_markdown(rows),
        ]
    classes = (data.info.get("classes") if data is not None else None) or []
    if any("test/zs_top1" in (r.get("metrics") or {}) for r in rows):
        parts += [
            "## Classification and the modality gap",
            "",
            'Zero-shot: each class is the mean embedding of prompts ("a drawing of {class}.", '
            '"clip art of {class}.", "an icon of {class}.", "{class}"), each image takes '
            "the nearest class (CLIP's prompt ensembling). Linear probe: logistic regression on "
            "the image embeddings of up to 3,000 training images. Accuracies in %. The modality "
            "gap (distance between the two modalities' mean unit embeddings) of the test "
            "embeddings with the model as initialised and as trained.",
            "",
            classification_markdown(rows),
        ]
        if _plot_per_class(rows, classes, out / "zero_shot.png"):
            parts += ["![zero-shot per class](zero_shot.png)", ""]
    if ceiling is not None:
        parts += [
            "## How ambiguous is the test set?",
            "",
            f"{100 * ceiling['share_ambiguous']:.1f}% of test captions are true of more than one "
            f"test image (on average a caption is true of {ceiling['mean_matches']:.2f} images). "
            "No model can tell those images apart from the caption, so the best reachable "
            f"**text-to-image R@1 is {100 * ceiling['ceiling_r1_t2i']:.1f}%** and the best "
            f"image-to-text R@1 is {100 * ceiling['ceiling_r1_i2t']:.1f}%. Read R@1 against these "
            "ceilings, not against 100%.",
            "",
        ]
    parts += [
        "## Recall@K",
        "",
        "![recall](recall.png)",
        "",
        "## Training curves",
        "",
        "![curves](curves.png)",
        "",
    ]
    if _plot_parts(rows, out / "objective_parts.png"):
        parts += ["## Objective parts", "", "![parts](objective_parts.png)", ""]
    for name, art in artefacts.items():
        if art is None:
            continue
        fit, sims, exp_data = art
        if (
            isinstance(fit.model, CaptionGenerator)
            and "test" in exp_data.splits
            and not exp_data["test"].is_features
        ):
            fname = f"captions_{name}.png"
            _plot_captions(fit.model, exp_data, name, out / fname)
            parts += [f"## Generated captions: {name}", "", f"![{name}]({fname})", ""]
        if "test" in sims and _plot_grid(
            exp_data, sims["test"], name, out / f"retrievals_{name}.png"
        ):
            fname = f"retrievals_{name}.png"
            parts += [f"## Retrieved captions: {name}", "", f"![{name}]({fname})", ""]
    parts += [
        "## Reading the figures",
        "",
        "- `test_dk` holds the test images with captions in words and phrasings never seen in "
        'training captions ("crimson" for red, "disk" for circle, "west of" for "to the left '
        'of"); a tower with a vocabulary built from training captions maps them to `<unk>`.',
        "- Hard-negative accuracy: the share of test images that score their caption above a "
        "minimal edit of it (swapped attribute, relation or count). Chance is 50%.",
        "- Winoground scores: chance is 25% (text, image) and 16.7% (group).",
        "",
    ]
    return ["\n".join(parts)]
