"""Speech-text retrieval on spoken sentences (task ``speech_text``, suite ``spoken``).

A speech-text dual encoder (:class:`~alignfuse.models.DualEncoder` keyed ``("audio", "text")``) is
trained so that an utterance and its sentence embed together: each batch holds
``train.batch_size`` distinct training sentences with one of their utterances each (so a
batch holds no false negatives), drawn as a pure function of ``(seed, epoch)``. The last
``task.args.test_sentences`` sentences are never seen in training; ``held_out_voice``, if
given, is kept out of training and appears in test. Reported: retrieval both ways (speech to
text ``s2t_*``: an utterance finds its sentence; text to speech ``t2s_*``: a sentence finds its
utterances), mAP, the modality gap, and speech-to-text R@1 per voice.

Task arguments: ``test_sentences`` (default 80), ``held_out_voice`` (default none).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from alignfuse.config import ExperimentConfig
from alignfuse.data.spoken import REFERENCE, SpokenData
from alignfuse.encoders.audio import pad_frames
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.errors import ConfigError
from alignfuse.metrics import modality_gap, retrieval_map, retrieval_metrics
from alignfuse.models.dual_encoder import DualEncoder
from alignfuse.models.speech_text import MODALITIES
from alignfuse.outputs import LossOutput
from alignfuse.registry import DATASETS, LOSSES, MODELS, TASKS
from alignfuse.tasks.base import TaskDefaults, task_args


@dataclass
class SpeechTextArgs:
    """``task.args`` of ``speech_text``."""

    test_sentences: int = 80  # the last sentences, never seen in training
    held_out_voice: str | None = None  # kept out of training, in test


def split_sentences(data: SpokenData, n_test: int) -> tuple[list[int], list[int]]:
    """The last ``n_test`` sentences are the test set; the rest train."""
    n = len(data.sentences)
    if not 1 <= n_test < n:
        raise ConfigError(
            f"task.args.test_sentences must be in [1, {n - 1}] for {n} sentences, got {n_test}"
        )
    return list(range(n - n_test)), list(range(n - n_test, n))


def is_speech_text(model: nn.Module) -> bool:
    """Whether ``model`` is a speech-text dual encoder."""
    return isinstance(model, DualEncoder) and model.modalities == MODALITIES


def features(model: DualEncoder, data: SpokenData) -> list[torch.Tensor]:
    """Normalised log-mel frames of every utterance (computed once)."""
    out = []
    for u in data.utterances:
        b = model.prepare("audio", [u.audio], u.sample_rate)
        out.append(b["feats"][0, : int(b["lengths"][0])])
    return out


def by_sentence(data: SpokenData, exclude_voice: str | None = None) -> dict[int, list[int]]:
    """The utterances of each sentence (except those in ``exclude_voice``)."""
    out: dict[int, list[int]] = {}
    for i, u in enumerate(data.utterances):
        if u.voice != exclude_voice:
            out.setdefault(u.sentence, []).append(i)
    return out


@torch.no_grad()
def evaluate_speech_text(
    model: DualEncoder, data: SpokenData, feats: list[torch.Tensor], sentences: list[int]
) -> dict[str, float]:
    """Retrieval between the given sentences and all their utterances."""
    was_training = model.training
    model.eval()
    try:
        index = {s: i for i, s in enumerate(sentences)}
        utts = [i for i, u in enumerate(data.utterances) if u.sentence in index]
        dev = next(model.parameters()).device
        audio = torch.cat(
            [
                model.encode(
                    "audio",
                    {
                        k: v.to(dev)
                        for k, v in pad_frames([feats[i] for i in utts[k : k + 64]]).items()
                    },
                )
                for k in range(0, len(utts), 64)
            ]
        )
        text = model.encode("text", model.prepare("text", [data.sentences[s] for s in sentences]))
    finally:
        model.train(was_training)
    owner = torch.tensor([index[data.utterances[i].sentence] for i in utts], device=dev)
    sims = text @ audio.T  # rows: sentences; columns: utterances
    renamed = {"i2t": "t2s", "t2i": "s2t"}  # rows are texts here, columns utterances
    out = {
        (renamed[k[:3]] + k[3:] if k[:3] in renamed else k): v
        for k, v in {**retrieval_metrics(sims, owner), **retrieval_map(sims, owner)}.items()
    }
    out["modality_gap"] = modality_gap(audio, text)
    best = sims.argmax(0)
    for voice in sorted({data.utterances[i].voice for i in utts}):
        cols = [j for j, i in enumerate(utts) if data.utterances[i].voice == voice]
        out[f"s2t_r1_{voice}"] = float((best[cols] == owner[cols]).double().mean())
    return out


@TASKS.register("speech_text")
class SpeechTextTask(TaskDefaults):
    """Speech-text retrieval: unseen sentences, an optional unseen voice (espeak-ng data)."""

    name: ClassVar[str] = "speech_text"
    arguments: ClassVar[type[Any] | None] = SpeechTextArgs

    def __init__(self, cfg: ExperimentConfig, data: SpokenData, run_dir: str | Path) -> None:
        args = task_args(SpeechTextArgs, cfg)
        self.cfg = cfg
        self.data = data
        self.train_s, self.test_s = split_sentences(data, args.test_sentences)
        held_out = args.held_out_voice
        voices = sorted({u.voice for u in data.utterances})
        if held_out is not None and held_out not in voices:
            raise ConfigError(f"task.args.held_out_voice {held_out!r} is not among {voices}")
        if held_out == REFERENCE[0]:
            raise ConfigError(f"task.args.held_out_voice cannot be the reference {REFERENCE[0]!r}")
        self.held_out: str | None = held_out
        bs = cfg.train.batch_size
        if bs < 2 or bs > len(self.train_s):
            raise ConfigError(f"train.batch_size must be in [2, {len(self.train_s)}], got {bs}")
        self.by_sentence = by_sentence(data, exclude_voice=held_out)
        vocab = Path(run_dir) / "vocab.json"
        self.tokenizer = (
            Tokenizer.load(vocab)
            if vocab.is_file()
            else Tokenizer.build([data.sentences[s] for s in self.train_s])
        )
        self.feats: list[torch.Tensor] = []
        self.device = torch.device("cpu")
        self._plan: tuple[int, list[tuple[list[int], list[int]]]] | None = None

    @staticmethod
    def load_data(cfg: ExperimentConfig) -> SpokenData:
        """The spoken sentences the config's ``data`` section names."""
        if cfg.data.name != "spoken":
            raise ConfigError(f"task 'speech_text' needs data.name: spoken, got {cfg.data.name!r}")
        data: SpokenData = DATASETS.create("spoken", **cfg.data.args)
        return data

    # ------------------------------------------------------------------ training

    def build(self) -> tuple[nn.Module, nn.Module]:
        m = self.cfg.model
        model: nn.Module = MODELS.create(
            m.name,
            tokenizer=self.tokenizer,
            embed_dim=m.embed_dim,
            text_encoder=m.text_encoder,
            **m.args,
        )
        loss: nn.Module = LOSSES.create(self.cfg.loss.name, **self.cfg.loss.args)
        return model, loss

    def setup(self, model: nn.Module, loss_fn: nn.Module, device: torch.device, world: int) -> None:
        if not isinstance(model, DualEncoder) or not is_speech_text(model):
            raise ConfigError(
                f"task 'speech_text' trains a speech_text model, got model.name {self.cfg.model.name!r}"
            )
        if world > 1:
            raise ConfigError("task 'speech_text' trains in one process")
        self.device = device
        self.feats = features(model, self.data)

    def steps_per_epoch(self) -> int:
        return len(self.train_s) // self.cfg.train.batch_size

    def epoch_plan(self, epoch: int) -> list[tuple[list[int], list[int]]]:
        """The (sentences, utterances) of each batch of ``epoch``."""
        rng = np.random.default_rng([self.cfg.train.seed, epoch])
        order = rng.permutation(self.train_s)
        bs = self.cfg.train.batch_size
        plan = []
        for k in range(0, len(order) - bs + 1, bs):
            sents = [int(s) for s in order[k : k + bs]]
            utts = [int(rng.choice(self.by_sentence[s])) for s in sents]
            plan.append((sents, utts))
        return plan

    def batch(self, epoch: int, index: int, rank: int, world: int) -> dict[str, Any]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.epoch_plan(epoch))
        sents, utts = self._plan[1][index]
        audio = pad_frames([self.feats[i] for i in utts])
        return {
            "audio": {k: v.to(self.device) for k, v in audio.items()},
            "text": [self.data.sentences[s] for s in sents],
        }

    def step(self, model: nn.Module, loss_fn: nn.Module, batch: dict[str, Any]) -> LossOutput:
        assert isinstance(model, DualEncoder)
        a = model.encode("audio", batch["audio"])
        t = model.encode("text", model.prepare("text", batch["text"]))
        return LossOutput(loss_fn(a, t).loss)

    # ------------------------------------------------------------------ evaluation

    def save(self, run_dir: Path) -> None:
        super().save(run_dir)  # config.yaml
        self.tokenizer.save(run_dir / "vocab.json")

    def evaluate(self, model: nn.Module) -> tuple[dict[str, float], Any]:
        assert isinstance(model, DualEncoder)
        return evaluate_speech_text(model, self.data, self.feats, self.test_s), None

    def headline(self, metrics: dict[str, float]) -> str:
        return (
            f"s2t R@1 {metrics['s2t_r1']:.3f}, t2s R@1 {metrics['t2s_r1']:.3f}, "
            f"rsum {metrics['rsum']:.1f}"
        )

    # ------------------------------------------------------------------ report

    leaderboard_caption: ClassVar[str] = "test; recalls in %"

    @staticmethod
    def leaderboard(rows: list[dict[str, Any]]) -> str:
        from alignfuse.bench.report import rows_table

        keys = ("s2t_r1", "s2t_r5", "s2t_r10", "t2s_r1", "t2s_r5", "t2s_r10")
        head = ["model", *(f"{k[:3]} R@{k[5:]}" for k in keys), "rsum", "s2t mAP"]
        head += ["modality gap", "train s", "params"]
        return rows_table(
            rows,
            head,
            lambda r: [
                r["name"],
                *(f"{100 * r['metrics'][k]:.1f}" for k in keys),
                f"{r['metrics']['rsum']:.1f}",
                f"{r['metrics']['s2t_map']:.3f}",
                f"{r['metrics']['modality_gap']:.3f}",
                f"{r['train_seconds']:.0f}",
                f"{r['trainable_params'] / 1e6:.2f}M",
            ],
        )

    @staticmethod
    def report(
        rows: list[dict[str, Any]], out: Path, data: Any, artefacts: dict[str, Any]
    ) -> list[str]:
        done = [r for r in rows if r.get("status") == "ok"]
        args = done[0]["config"]["task"]["args"] if done else {}
        held_out = args.get("held_out_voice")
        _plot(done, out / "curves.png", held_out)
        test_line = ""
        if data is not None and done:
            n_test = int(args.get("test_sentences", SpeechTextArgs.test_sentences))
            _, test_s = split_sentences(data, n_test)
            groups = by_sentence(data)
            test_line = (
                f"Test: {len(test_s)} unseen sentences, "
                f"{sum(len(groups[s]) for s in test_s)} utterances "
                f"(chance speech-to-text R@1: {1 / len(test_s):.3f}).\n\n"
            )
        return [
            f"## Speech-to-text R@1 by voice (test)\n\n{test_line}{_voices(done, held_out)}",
            "## Training loss and R@1 by voice\n\n![curves](curves.png)",
        ]


def _voices(rows: list[dict[str, Any]], held_out: str | None) -> str:
    from alignfuse.bench.report import markdown_table

    voices = sorted({k[7:] for r in rows for k in r["metrics"] if k.startswith("s2t_r1_")})
    body = [
        [r["name"], *(f"{100 * r['metrics'][f's2t_r1_{v}']:.1f}" for v in voices)] for r in rows
    ]
    head = [f"{v} (not in training)" if v == held_out else v for v in voices]
    return markdown_table(["model", *head], body)


def _plot(rows: list[dict[str, Any]], path: Path, held_out: str | None = None) -> None:
    from alignfuse.bench.report import pyplot

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in rows:
        losses = r["history"]["epochs"]
        ax1.plot(range(1, len(losses) + 1), losses, label=r["name"])
    ax1.set(xlabel="epoch", ylabel="training loss (own objective)", title="training loss")
    ax1.set_yscale("log")
    voices = sorted({k[7:] for r in rows for k in r["metrics"] if k.startswith("s2t_r1_")})
    width = 0.8 / max(1, len(rows))
    for j, r in enumerate(rows):
        vals = [r["metrics"][f"s2t_r1_{v}"] for v in voices]
        ax2.bar(np.arange(len(voices)) + j * width, vals, width, label=r["name"])
    labels = [f"{v}\n(not trained)" if v == held_out else v for v in voices]
    ax2.set_xticks(np.arange(len(voices)) + width * (len(rows) - 1) / 2, labels, fontsize=8)
    ax2.set(ylabel="speech-to-text R@1 (test)", ylim=(0, 1), title="by voice")
    for ax, where in ((ax1, "best"), (ax2, "lower right")):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc=where)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
