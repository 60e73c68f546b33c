"""Image-text matching with any fusion over frozen image tokens, scored on minimal edits
(task ``matching``, suite ``fusion``).

Each experiment is one fusion (``model.name``, ``model.args``) between the frozen image
tokens of :mod:`alignfuse.tasks.frozen_towers` and the word tokens of a caption encoder of
its own, followed by a match logit; trained by the one loop to tell each training image's
caption from a word-swap edit of it (NegCLIP-style: swapped colours or shapes) and from
another image's caption. Scored on the test split's exact minimal edits: the share of test
images whose true caption scores above its minimal edit, above another image's caption, and
the accuracy of the logit's sign.

Task arguments (:class:`~alignfuse.tasks.frozen_towers.HeadArgs`): ``width`` (default 64),
``pretrain`` (the frozen towers' settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.errors import ConfigError
from alignfuse.outputs import LossOutput
from alignfuse.registry import FUSION, TASKS
from alignfuse.tasks.base import PermutedRows, TaskDefaults, task_args
from alignfuse.tasks.frozen_towers import FrozenTowers, HeadArgs, frozen_towers, head_args
from alignfuse.tasks.vqa import encode_words, question_encoder


class MatchModel(nn.Module):
    """Caption encoder + a fusion of (image tokens, caption tokens) + a match logit."""

    def __init__(
        self, fusion: str, image_dim: int, tokenizer: Tokenizer, width: int, args: dict[str, Any]
    ) -> None:
        super().__init__()
        self.text = question_encoder(tokenizer)
        self.fusion = FUSION.create(
            fusion, dims={"image": image_dim, "question": self.text.out_dim}, out_dim=width, **args
        )
        self.head = nn.Sequential(nn.GELU(), nn.Linear(width, 1))

    def forward(
        self, image: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        t, tm = encode_words(self.text, ids, lengths)
        return self.head(self.fusion({"image": image, "question": t}, {"question": tm}))[:, 0]  # type: ignore[no-any-return]


def perturb(caption: str, rng: np.random.Generator) -> str:
    """A word-level hard negative for training (NegCLIP-style): swap two different colours or
    shapes of the caption, else replace its colour by another. Not guaranteed false for every
    scene (another object may have that colour); test negatives are the dataset's exact
    minimal edits."""
    from alignfuse.data.shapes import COLORS, SHAPES

    words = caption.split()
    for vocab in (set(COLORS), set(SHAPES) | {s + "s" for s in SHAPES}):
        pos = [i for i, w in enumerate(words) if w in vocab]
        distinct = [i for i in pos if words[i] != words[pos[0]]] if pos else []
        if distinct:
            a, b = pos[0], distinct[0]
            words[a], words[b] = words[b], words[a]
            return " ".join(words)
    pos = [i for i, w in enumerate(words) if w in COLORS]
    if pos:
        i = pos[int(rng.integers(len(pos)))]
        words[i] = str(rng.choice([c for c in COLORS if c != words[i]]))
    return " ".join(words)


def matching_split(split: Any, tokens: torch.Tensor, tok: Tokenizer, seed: int) -> dict[str, Any]:
    """Per image: a true caption, a hard negative (the dataset's minimal edit where the split
    has one, else a word swap) and a caption of another image."""
    rng = np.random.default_rng(seed)
    negs = split.extras.get("negatives")
    n = len(split)
    if negs:
        pos = [split.captions[i][negs[i]["positive"]] for i in range(n)]
        hard = [negs[i]["caption"] for i in range(n)]
    else:
        pos = [split.captions[i][int(rng.integers(len(split.captions[i])))] for i in range(n)]
        hard = [perturb(c, rng) for c in pos]
    other = [split.captions[(i + 1 + int(rng.integers(n - 1))) % n][0] for i in range(n)]
    enc = {k: tok.batch(v, 24) for k, v in (("pos", pos), ("hard", hard), ("other", other))}
    return {"images": tokens, **enc}


@dataclass
class MatchingData:
    """The frozen towers, the caption vocabulary and both splits."""

    towers: FrozenTowers
    tokenizer: Tokenizer
    train: dict[str, Any]
    test: dict[str, Any]


@TASKS.register("matching")
class MatchingTask(PermutedRows, TaskDefaults):
    """A fusion trained as an image-text matcher, scored on exact minimal edits."""

    name: ClassVar[str] = "matching"
    arguments: ClassVar[type[Any] | None] = HeadArgs
    leaderboard_caption: ClassVar[str] = (
        "test: each image with its caption, its minimal edit, another image's caption"
    )

    def __init__(self, cfg: ExperimentConfig, data: MatchingData, run_dir: str | Path) -> None:
        self.cfg, self.data = cfg, data
        self.args = head_args(cfg, "matching", data, MatchingData)
        self.n = data.train["images"].shape[0]

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> MatchingData:
        towers = frozen_towers(cfg, task_args(HeadArgs, cfg).pretrain)
        data = towers.data
        if not data["test"].extras.get("negatives"):
            raise ConfigError(
                f"task 'matching' scores minimal edits; the test split of "
                f"{cfg.data.name!r} has none"
            )
        tok = Tokenizer.build([c for caps in data["train"].captions for c in caps])
        train = matching_split(data["train"], towers.train_tokens, tok, 0)
        test = matching_split(data["test"], towers.test_tokens, tok, 1)
        return MatchingData(towers, tok, train, test)

    def build(self) -> tuple[nn.Module, nn.Module]:
        d = self.data
        model = MatchModel(
            self.cfg.model.name,
            d.train["images"].shape[-1],
            d.tokenizer,
            self.args.width,
            self.cfg.model.args,
        )
        return model, nn.Identity()

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> LossOutput:
        train, idx = self.data.train, batch["rows"]
        img = train["images"][idx]
        logits, labels = [], []
        for kind, y in (("pos", 1.0), ("hard", 0.0), ("other", 0.0)):
            b = train[kind]
            logits.append(model(img, b["ids"][idx], b["lengths"][idx]))
            labels.append(torch.full((len(idx),), y))
        return LossOutput(
            F.binary_cross_entropy_with_logits(
                torch.cat(logits), torch.cat(labels), pos_weight=torch.tensor(2.0)
            )
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], Any]:
        model.eval()
        test = self.data.test
        sc = {
            k: model(test["images"], test[k]["ids"], test[k]["lengths"])
            for k in ("pos", "hard", "other")
        }
        return {
            "match_acc": float(torch.cat([(sc["pos"] > 0), (sc["other"] <= 0)]).float().mean()),
            "hard_negative_acc": float((sc["pos"] > sc["hard"]).float().mean()),
            "random_negative_acc": float((sc["pos"] > sc["other"]).float().mean()),
        }, None

    def headline(self, metrics: dict[str, float]) -> str:
        return (
            f"match acc {metrics['match_acc']:.3f}, pos > hard negative "
            f"{metrics['hard_negative_acc']:.3f}, pos > random {metrics['random_negative_acc']:.3f}"
        )

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import rows_table

        keys = ("match_acc", "hard_negative_acc", "random_negative_acc")
        return rows_table(
            rows,
            ["fusion", "match acc", "true > hard negative", "true > random caption", "train s"],
            lambda r: [
                r["config"]["model"]["name"],
                *(f"{r['metrics'][k]:.3f}" for k in keys),
                f"{r['train_seconds']:.0f}",
            ],
            order=lambda r: -r["metrics"]["hard_negative_acc"],
        )
