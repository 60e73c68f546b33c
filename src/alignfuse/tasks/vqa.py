"""Visual question answering with any fusion over frozen image tokens (task ``vqa``, suite
``fusion``).

Each experiment is one fusion (``model.name``: a name of ``alignfuse list fusion``;
``model.args``: its arguments) between the frozen image tokens of
:mod:`alignfuse.tasks.frozen_towers` and the word tokens of a question encoder of its own
(word embeddings + BiGRU, :class:`~alignfuse.encoders.text.BiGRUTextEncoder`), followed by an
answer classifier; trained by the one loop with cross-entropy on the training questions.
Reported: test accuracy overall and per question type (colour, count, exists), robustness
(the image dropped: absent for fusions that allow it, zeros otherwise; the image tokens
noised with Gaussian noise of their standard deviation; every question word unknown), the
fusion's parameters and the latency of one question.

Task arguments (:class:`~alignfuse.tasks.frozen_towers.HeadArgs`): ``width`` (the fusion's
output width, default 64), ``pretrain`` (the frozen towers' settings, see
:mod:`alignfuse.tasks.frozen_towers`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.encoders.text import BiGRUTextEncoder
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.errors import ConfigError
from alignfuse.outputs import LossOutput
from alignfuse.registry import FUSION, TASKS
from alignfuse.tasks.base import PermutedRows, TaskDefaults, task_args
from alignfuse.tasks.frozen_towers import FrozenTowers, HeadArgs, frozen_towers, head_args

KINDS = ("color", "count", "exists")


def question_encoder(tokenizer: Tokenizer) -> BiGRUTextEncoder:
    """Word embeddings (64) and a BiGRU (2 x 64) over the words of a question or caption."""
    return BiGRUTextEncoder(tokenizer, word_dim=64, hidden=64)


def encode_words(
    encoder: BiGRUTextEncoder, ids: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Word tokens ``(B, L, D)`` and their mask ``(B, L)``."""
    mask = torch.arange(ids.shape[1], device=ids.device)[None] < lengths.to(ids.device)[:, None]
    return encoder.tokens(ids, lengths), mask


class VQAModel(nn.Module):
    """Question encoder + a fusion of (image tokens, question tokens) + answer classifier."""

    def __init__(
        self,
        fusion: str,
        image_dim: int,
        tokenizer: Tokenizer,
        n_answers: int,
        width: int,
        args: dict[str, Any],
    ) -> None:
        super().__init__()
        self.question = question_encoder(tokenizer)
        self.fusion = FUSION.create(
            fusion,
            dims={"image": image_dim, "question": self.question.out_dim},
            out_dim=width,
            **args,
        )
        self.head = nn.Sequential(nn.GELU(), nn.Linear(width, n_answers))

    def forward(
        self, image: torch.Tensor | None, ids: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        q, qm = encode_words(self.question, ids, lengths)
        inputs, masks = {"question": q}, {"question": qm}
        if image is not None:
            inputs["image"] = image
        return self.head(self.fusion(inputs, masks))  # type: ignore[no-any-return]


def questions(split: Any) -> tuple[list[int], list[str], list[str], list[str]]:
    """Every question of a split: its image, text, answer and kind."""
    owner, qs, ans, kinds = [], [], [], []
    for i, pairs in enumerate(split.extras["questions"]):
        for q, a in pairs:
            owner.append(i)
            qs.append(q)
            ans.append(a)
            kinds.append(
                "color"
                if q.startswith("what color")
                else "count"
                if q.startswith("how many")
                else "exists"
            )
    return owner, qs, ans, kinds


def vqa_split(
    split: Any, tokens: torch.Tensor, tok: Tokenizer, answers: list[str]
) -> dict[str, Any]:
    """A split's questions as tensors (questions whose answer is not among ``answers`` are
    left out)."""
    owner, qs, ans, kinds = questions(split)
    batch = tok.batch(qs, 16)
    index = {a: i for i, a in enumerate(answers)}
    keep = [i for i, a in enumerate(ans) if a in index]
    return {
        "images": tokens,
        "owner": torch.tensor(owner)[keep],
        "ids": batch["ids"][keep],
        "lengths": batch["lengths"][keep],
        "labels": torch.tensor([index[ans[i]] for i in keep]),
        "kinds": [kinds[i] for i in keep],
        "image_std": float(tokens.std()),
    }


@dataclass
class VqaData:
    """The frozen towers, the question vocabulary, the answers and both splits."""

    towers: FrozenTowers
    tokenizer: Tokenizer
    answers: list[str]
    train: dict[str, Any]
    test: dict[str, Any]
    majority: float


@TASKS.register("vqa")
class VqaTask(PermutedRows, TaskDefaults):
    """A fusion answering shapes questions from frozen image tokens."""

    name: ClassVar[str] = "vqa"
    arguments: ClassVar[type[Any] | None] = HeadArgs
    leaderboard_caption: ClassVar[str] = "test questions"

    def __init__(self, cfg: ExperimentConfig, data: VqaData, run_dir: str | Path) -> None:
        self.cfg, self.data = cfg, data
        self.args = head_args(cfg, "vqa", data, VqaData)
        self.n = len(data.train["labels"])

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> VqaData:
        towers = frozen_towers(cfg, task_args(HeadArgs, cfg).pretrain)
        data = towers.data
        if "questions" not in data["train"].extras:
            raise ConfigError(f"task 'vqa' needs questions; data {cfg.data.name!r} has none")
        _, qs, ans, _ = questions(data["train"])
        tok = Tokenizer.build(qs)
        answers = sorted(set(ans))
        train = vqa_split(data["train"], towers.train_tokens, tok, answers)
        test = vqa_split(data["test"], towers.test_tokens, tok, answers)
        common = np.bincount(train["labels"]).argmax()
        majority = float(np.mean(np.asarray(test["labels"]) == common))
        return VqaData(towers, tok, answers, train, test, majority)

    # ------------------------------------------------------------------ training

    def build(self) -> tuple[nn.Module, nn.Module]:
        d = self.data
        model = VQAModel(
            self.cfg.model.name,
            d.train["images"].shape[-1],
            d.tokenizer,
            len(d.answers),
            self.args.width,
            self.cfg.model.args,
        )
        return model, nn.CrossEntropyLoss()

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> LossOutput:
        t, idx = self.data.train, batch["rows"]
        logits = model(t["images"][t["owner"][idx]], t["ids"][idx], t["lengths"][idx])
        return LossOutput(F.cross_entropy(logits, t["labels"][idx]))

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], Any]:
        assert isinstance(model, VQAModel)
        model.eval()
        test = self.data.test

        @torch.no_grad()
        def accuracy(mode: str) -> tuple[float, dict[str, float]]:
            preds = []
            g = torch.Generator().manual_seed(1)
            for s in range(0, len(test["labels"]), 512):
                img = test["images"][test["owner"][s : s + 512]]
                ids, lens = test["ids"][s : s + 512], test["lengths"][s : s + 512]
                if mode == "no_image":
                    img = None if not model.fusion.requires_all else torch.zeros_like(img)
                elif mode == "noisy_image":
                    img = img + torch.randn(img.shape, generator=g) * test["image_std"]
                elif mode == "no_question":
                    ids = torch.full_like(ids, 1)  # every word unknown
                preds.append(model(img, ids, lens).argmax(1))
            hit = (torch.cat(preds) == test["labels"]).numpy()
            kinds = np.asarray(test["kinds"])
            return float(hit.mean()), {k: float(hit[kinds == k].mean()) for k in KINDS}

        acc, per_kind = accuracy("clean")
        robust = {f"acc_{m}": accuracy(m)[0] for m in ("no_image", "noisy_image", "no_question")}
        with torch.no_grad():
            one = test["images"][:1]
            t1 = time.perf_counter()
            for _ in range(20):
                model(one, test["ids"][:1], test["lengths"][:1])
            latency_ms = (time.perf_counter() - t1) / 20 * 1000
        metrics = {
            "acc": acc,
            **{f"acc_{k}": v for k, v in per_kind.items()},
            **robust,
            "fusion_params": float(sum(p.numel() for p in model.fusion.parameters())),
            "latency_ms": round(latency_ms, 2),
            "majority": self.data.majority,
        }
        return metrics, None

    def headline(self, metrics: dict[str, float]) -> str:
        return (
            f"acc {metrics['acc']:.3f} (color {metrics['acc_color']:.2f}, count "
            f"{metrics['acc_count']:.2f}, exists {metrics['acc_exists']:.2f}); no image "
            f"{metrics['acc_no_image']:.3f}, noisy image {metrics['acc_noisy_image']:.3f}; "
            f"{int(metrics['fusion_params'])} fusion params"
        )

    # ------------------------------------------------------------------ report

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import rows_table

        head = ["fusion", "acc", "color", "count", "exists", "no image", "noisy image"]
        head += ["no question", "fusion params", "train s", "ms / question"]
        keys = ("acc", "acc_color", "acc_count", "acc_exists", "acc_no_image", "acc_noisy_image")
        done = [r for r in rows if r.get("status") == "ok"]
        return rows_table(
            rows,
            head,
            lambda r: [
                r["config"]["model"]["name"],
                *(f"{r['metrics'][k]:.3f}" for k in (*keys, "acc_no_question")),
                f"{int(r['metrics']['fusion_params']):,}",
                f"{r['train_seconds']:.0f}",
                f"{r['metrics']['latency_ms']:.2f}",
            ],
            order=lambda r: -r["metrics"]["acc"],
            title=f"Majority answer: {done[0]['metrics']['majority']:.3f}." if done else None,
        )

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        done = [r for r in rows if r.get("status") == "ok"]
        if not done:
            return []
        _plot_vqa(done, out / "vqa.png")
        sections = [
            "## VQA: clean and with a modality degraded\n\n"
            '"no image": absent for fusions that answer without it (late, MVAE), zeros for '
            'the others; "noisy image": Gaussian noise of the tokens\' standard deviation; '
            '"no question": every word replaced by the unknown token.\n\n![vqa](vqa.png)\n'
        ]
        if isinstance(data, VqaData):
            t = data.towers
            sections.insert(
                0,
                f"## Frozen towers\n\nA CLIP-style dual encoder, test t2i R@1 "
                f"{t.row['metrics']['test/t2i_r1']:.3f} ({t.row['train_seconds']:.0f} s to "
                f"train; config {t.row['config_hash']}); its image tokens "
                f"{tuple(t.train_tokens.shape[1:])} feed every fusion. "
                f"{len(data.train['labels'])} training and {len(data.test['labels'])} test "
                f"questions, {len(data.answers)} answers.\n",
            )
            for name, art in artefacts.items():
                if art is not None and art[0] is not None and art[0].cfg.model.name == "san":
                    path = out / f"san_attention_{name}.png"
                    _plot_san(art[0].model, t.data["test"], data, path)
                    sections.append(
                        f"## SAN's two hops over the image ({name})\n\n![san]({path.name})\n"
                    )
        return sections


def _plot_vqa(rows: list[dict[str, Any]], path: Path) -> None:
    from alignfuse.bench.report import grouped_bars

    rows = sorted(rows, key=lambda r: -r["metrics"]["acc"])
    series = {
        label: [r["metrics"][key] for r in rows]
        for key, label in (
            ("acc", "clean"),
            ("acc_noisy_image", "noisy image"),
            ("acc_no_image", "no image"),
            ("acc_no_question", "no question"),
        )
    }
    grouped_bars(
        path,
        [r["config"]["model"]["name"] for r in rows],
        series,
        ylabel="VQA accuracy (test)",
        title="fusions on shapes VQA: clean and with a modality degraded",
        size=(11, 4),
        rotation=30,
    )


def overlay(ax: Any, image: np.ndarray, weights: np.ndarray, title: str) -> None:
    """Attention ``weights`` over a square grid of regions, drawn over ``image``."""
    side = round(len(weights) ** 0.5)
    heat = weights.reshape(side, side)
    ax.imshow(image)
    ax.imshow(
        np.kron(heat, np.ones((image.shape[0] // side, image.shape[1] // side))),
        cmap="jet",
        alpha=0.45,
    )
    ax.set_title(title, fontsize=7)
    ax.axis("off")


@torch.no_grad()
def _plot_san(model: Any, split: Any, data: VqaData, path: Path, n: int = 4) -> None:
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    model.eval()
    test = data.test
    idx = list(range(n))
    logits = model(test["images"][test["owner"][idx]], test["ids"][idx], test["lengths"][idx])
    att = model.fusion.last_attention  # (n, hops, regions)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2.1 * n))
    for r, i in enumerate(idx):
        img = split.images[int(test["owner"][i])]
        q = " ".join(data.tokenizer.decode(test["ids"][i][: test["lengths"][i]].tolist()).split())
        pred = data.answers[int(logits[r].argmax())]
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"{q}\n-> {pred}", fontsize=6)
        axes[r, 0].axis("off")
        for h in range(2):
            overlay(axes[r, h + 1], img, att[r, h].numpy(), f"hop {h + 1}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
