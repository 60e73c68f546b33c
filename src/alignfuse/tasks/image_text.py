"""Image-text retrieval, matching and captioning on image-caption data (task ``image_text``).

Every model of the image-text family trains here, told apart by what it can do
(:mod:`alignfuse.models.protocols`): a dual encoder trains on the configured loss of its two
embeddings (gathered across ranks under ``torchrun``, or through GradCache with
``train.grad_cache_chunk``); a pairwise scorer (SCAN) on the loss's ``from_similarity`` of its
own batch score matrix; a model with its own objective (ALBEF, Q-Former, the captioner) on
``model.training_loss(batch, loss)``, whose parts the history records.

Each epoch visits every training image ``train.captions_per_image`` times, each time with
another of its captions, in an order that is a pure function of ``(seed, epoch)``.
Validation is retrieval on ``eval.val_subset`` validation images; the final evaluation is
:func:`alignfuse.engine.evaluate.evaluate` on ``eval.splits`` (retrieval both ways,
compositional probes, Winoground, captioning metrics for a captioner).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.data.base import ImageTextData
from alignfuse.distributed import all_gather_with_grad
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.evaluate import evaluate, evaluate_split, images_to_tensor
from alignfuse.engine.grad_cache import grad_cache_step
from alignfuse.errors import ConfigError
from alignfuse.models.protocols import (
    CaptionGenerator,
    OwnObjective,
    PairwiseScorer,
    SimilarityLoss,
    TwoStageRanker,
)
from alignfuse.outputs import LossOutput
from alignfuse.registry import DATASETS, LOSSES, MODELS, TASKS
from alignfuse.tasks.base import TaskDefaults, check_task_args


def load_data(cfg: ExperimentConfig) -> ImageTextData:
    """Build the configured image-caption dataset from the registry."""
    data: ImageTextData = DATASETS.create(cfg.data.name, **cfg.data.args)
    if "train" not in data.splits:
        raise ConfigError(f"dataset {cfg.data.name!r} has no 'train' split")
    return data


def build_model(cfg: ExperimentConfig, tokenizer: Tokenizer | None) -> nn.Module:
    """Build the configured model (seeded) from the registry."""
    torch.manual_seed(cfg.train.seed)
    model: nn.Module = MODELS.create(
        cfg.model.name,
        tokenizer=tokenizer,
        embed_dim=cfg.model.embed_dim,
        image_encoder=cfg.model.image_encoder,
        text_encoder=cfg.model.text_encoder,
        **cfg.model.args,
    )
    return model


def build_loss(cfg: ExperimentConfig) -> nn.Module:
    """Build the configured loss from the registry."""
    loss: nn.Module = LOSSES.create(cfg.loss.name, **cfg.loss.args)
    return loss


def precompute_frozen_text(model: nn.Module, texts: list[str], progress: bool) -> bool:
    """Embed ``texts`` once with every frozen sentence encoder inside ``model`` (their
    outputs never change; stored on disk for the next run); return whether there was one."""
    from alignfuse.encoders.pretrained import FrozenSentenceEncoder

    found = False
    for module in model.modules():
        if isinstance(module, FrozenSentenceEncoder):
            module.precompute(texts, show_progress=progress, store=True)
            found = True
    return found


def precompute_frozen_images(
    model: nn.Module, arrays: list[np.ndarray], batch_size: int, progress: bool
) -> bool:
    """Run the frozen part of every image tower inside ``model`` that keeps a feature cache
    (:class:`~alignfuse.encoders.efficientnet.EfficientNetLite`) once over ``arrays`` (uint8
    image arrays; the same array object is visited once); return whether there was one."""
    from alignfuse.encoders.efficientnet import EfficientNetLite

    unique = list({id(a): a for a in arrays}.values())
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))

    def batches() -> Iterator[torch.Tensor]:
        for a in unique:
            for i in range(0, len(a), batch_size):
                yield images_to_tensor(a[i : i + batch_size], dev)

    found = False
    for module in model.modules():
        if isinstance(module, EfficientNetLite):
            module.precompute(batches, progress)
            found = True
    return found


@TASKS.register("image_text")
class ImageTextTask(TaskDefaults):
    """Image-text retrieval, matching and captioning on image-caption data."""

    name: ClassVar[str] = "image_text"

    def __init__(self, cfg: ExperimentConfig, data: ImageTextData, run_dir: str | Path) -> None:
        check_task_args(ImageTextTask, cfg)  # it takes none
        self.cfg = cfg
        self.data = data
        vocab = Path(run_dir) / "vocab.json"
        self.tokenizer = (
            Tokenizer.load(vocab) if vocab.is_file() else Tokenizer.build(data.train_texts)
        )
        k = cfg.train.captions_per_image
        if k < 1:
            raise ConfigError(f"train.captions_per_image must be >= 1, got {k}")
        if cfg.train.batch_size < 2:
            raise ConfigError(f"train.batch_size must be >= 2, got {cfg.train.batch_size}")
        self.world = 1
        self.device = torch.device("cpu")
        self.own_objective = self.pairwise = False
        self.model: nn.Module | None = None
        self._init_state: dict[str, torch.Tensor] | None = None
        self._pairs: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    load_data = staticmethod(load_data)

    # ------------------------------------------------------------------ training

    def build(self) -> tuple[nn.Module, nn.Module]:
        return build_model(self.cfg, self.tokenizer), build_loss(self.cfg)

    def setup(self, model: nn.Module, loss_fn: nn.Module, device: torch.device, world: int) -> None:
        cfg = self.cfg
        self.model, self.device, self.world = model, device, world
        self.own_objective = isinstance(model, OwnObjective)
        self.pairwise = isinstance(model, PairwiseScorer)
        from alignfuse.models.cca_dual import ClosedFormFit

        if not isinstance(model, (PairwiseScorer, TwoStageRanker, CaptionGenerator, ClosedFormFit)):
            # the state as initialised, for the modality gap before training (initial_gap)
            self._init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if self.own_objective and (world > 1 or cfg.train.grad_cache_chunk):
            raise ConfigError(
                f"model {cfg.model.name!r} trains on its own objective (training_loss): it "
                "trains in one process without GradCache (train.grad_cache_chunk: null)"
            )
        if self.pairwise:
            if not isinstance(loss_fn, SimilarityLoss):
                raise ConfigError(
                    f"model {cfg.model.name!r} scores pairs (no per-item embedding): its loss "
                    f"needs from_similarity(); {cfg.loss.name!r} has none (use info_nce or triplet)"
                )
            if world > 1 or cfg.train.grad_cache_chunk:
                raise ConfigError(
                    f"model {cfg.model.name!r} scores pairs: it trains in one process without "
                    "GradCache (train.grad_cache_chunk: null)"
                )
        if world > 1:
            if cfg.train.batch_size % world:
                raise ConfigError(
                    f"train.batch_size={cfg.train.batch_size} must be a multiple of the "
                    f"{world} processes (each takes an equal slice of a batch)"
                )
            if cfg.train.grad_cache_chunk:
                raise ConfigError(
                    "train.grad_cache_chunk is not supported with several processes: set it "
                    "to null (each process already holds only its slice of a batch)"
                )

    def steps_per_epoch(self) -> int:
        n_img = len(self.data["train"])
        return max(1, (n_img * self.cfg.train.captions_per_image) // self.cfg.train.batch_size)

    def start(self, model: nn.Module, progress: bool) -> None:
        splits = {"train", "val", *self.cfg.eval.splits}
        texts = [
            t for n, s in self.data.splits.items() if n in splits for t in s.flat_captions()[0]
        ]
        precompute_frozen_text(model, texts, progress)
        precompute_frozen_images(
            model,
            [s.images for n, s in self.data.splits.items() if n in splits],
            self.cfg.eval.batch_size,
            progress,
        )
        from alignfuse.models.cca_dual import ClosedFormFit

        if isinstance(model, ClosedFormFit):  # fitted in closed form: no gradient step
            split = self.data["train"]
            texts, owner = split.flat_captions()
            model.fit_pairs(split.images, texts, owner, self.cfg.eval.batch_size)

    def epoch_pairs(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The (image, caption) index pairs of an epoch, in training order."""
        split = self.data["train"]
        n = len(split)
        k = self.cfg.train.captions_per_image
        rng = np.random.default_rng([self.cfg.train.seed, epoch])
        n_caps = np.array([len(c) for c in split.captions])
        offsets = rng.integers(0, 1 << 30, size=n)
        imgs, caps = [], []
        for r in range(k):
            order = rng.permutation(n)
            imgs.append(order)
            caps.append((offsets[order] + r) % n_caps[order])
        return np.concatenate(imgs), np.concatenate(caps)

    def pairs_batch(
        self, pairs: tuple[np.ndarray, np.ndarray], index: int, rank: int, world: int, model: Any
    ) -> dict[str, Any]:
        """Tensors of batch ``index`` of the epoch whose ``pairs`` are given, for ``rank``."""
        bs = self.cfg.train.batch_size
        per = bs // world  # this rank's slice of the global batch
        lo = index * bs + rank * per
        imgs, caps = pairs[0][lo : lo + per], pairs[1][lo : lo + per]
        split = self.data["train"]
        texts = [split.captions[i][c] for i, c in zip(imgs, caps, strict=True)]
        prep = model.prepare_text(texts)
        return {
            "images": images_to_tensor(split.images[imgs], self.device),
            "text": {k: v.to(self.device) for k, v in prep.items()},
            "image_ids": torch.from_numpy(np.asarray(imgs, dtype=np.int64)).to(self.device),
        }

    def batch(self, epoch: int, index: int, rank: int, world: int) -> dict[str, Any]:
        if self._pairs is None or self._pairs[0] != epoch:
            self._pairs = (epoch, self.epoch_pairs(epoch))
        return self.pairs_batch(self._pairs[1], index, rank, world, self.model)

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> LossOutput:
        chunk = self.cfg.train.grad_cache_chunk
        if self.own_objective:  # the model's own objective around the configured loss
            out: LossOutput = model.training_loss(batch, loss_fn)  # type: ignore[operator]
            return out
        if self.pairwise:  # the model's own (B, B) score matrix
            sims = model(batch["images"], batch["text"])
            out = loss_fn.from_similarity(sims)  # type: ignore[operator]
        elif chunk:
            out = grad_cache_step(model, loss_fn, batch["images"], batch["text"], chunk)
        else:
            a, b = model(batch["images"], batch["text"])
            if self.world > 1:
                a, b = all_gather_with_grad(a), all_gather_with_grad(b)
            out = loss_fn(a, b)
        return LossOutput(out.loss)  # the history records the parts of own objectives only

    # ------------------------------------------------------------------ evaluation

    def validate(self, model: nn.Module) -> dict[str, float]:
        if "val" not in self.data.splits:
            return {}
        split = self.data["val"].subset(self.cfg.eval.val_subset)
        res = evaluate_split(model, split, self.cfg.eval.batch_size)
        res.pop("_sims", None)
        res.pop("_captions", None)
        return {k: float(v) for k, v in res.items()}

    def describe(self, metrics: dict[str, float]) -> str:
        if "rsum" in metrics:
            return f" val rsum {metrics['rsum']:.1f} t2i R@10 {metrics['t2i_r10']:.3f}"
        if "cider" in metrics:
            return f" val CIDEr-D {metrics['cider']:.3f} BLEU-4 {metrics['bleu_4']:.3f}"
        return ""

    def save(self, run_dir: Path) -> None:
        super().save(run_dir)  # config.yaml
        self.tokenizer.save(run_dir / "vocab.json")

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], Any]:
        e = self.cfg.eval
        metrics, sims = evaluate(model, self.data, e.splits, e.batch_size, e.retrieval_captioning)
        metrics.update(self.initial_gap(model))
        return metrics, sims

    def initial_gap(self, model: nn.Module) -> dict[str, float]:
        """The modality gap of the test embeddings with the model as initialised (``setup``
        keeps that state; the trained one is put back), for a model with one embedding per
        item: ``{"test/init_modality_gap": ...}``."""
        if self._init_state is None or "test" not in self.data.splits:
            return {}
        from alignfuse.engine.evaluate import embed_images, embed_texts
        from alignfuse.metrics import modality_gap

        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        was_training = model.training
        try:
            model.load_state_dict(self._init_state)
            model.eval()
            split = self.data["test"]
            bs = self.cfg.eval.batch_size
            img = embed_images(model, split.images, bs)
            if img.ndim != 2:
                return {}
            txt = embed_texts(model, split.flat_captions()[0], bs)
            return {"test/init_modality_gap": modality_gap(img, txt)}
        finally:
            model.load_state_dict(trained)
            model.train(was_training)

    def headline(self, metrics: dict[str, float]) -> str:
        return (
            f"test rsum {metrics.get('test/rsum', float('nan')):.1f}, "
            f"t2i R@10 {metrics.get('test/t2i_r10', float('nan')):.3f}"
        )

    # ------------------------------------------------------------------ report

    leaderboard_caption: ClassVar[str] = "test split; recalls in %"

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.tasks.image_text_report import leaderboard_markdown

        return leaderboard_markdown(rows)

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        from alignfuse.tasks.image_text_report import report_sections

        return report_sections(rows, out, data, artefacts)
