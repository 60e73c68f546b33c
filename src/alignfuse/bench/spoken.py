"""The ``spoken`` benchmark: speech-text retrieval on synthesised speech.

A log-mel CNN audio tower (:class:`~alignfuse.encoders.audio.AudioCNN`) and a text tower are
trained so that an utterance and its sentence embed together (dual encoder; one utterance
per sentence in each batch, so a batch holds no false negatives). Test sentences are never
seen in training; each is spoken in several voices and rates. Reported: retrieval both ways
(speech to text: an utterance finds its sentence; text to speech: a sentence finds its
utterances), mAP, the modality gap, and speech-to-text R@1 per voice.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse._io import write_text_atomic
from alignfuse.bench.report import machine, markdown_table, pyplot
from alignfuse.bench.suite import check_keys, read_checked_suite, suite_kind
from alignfuse.data.spoken import REFERENCE, SpokenData, load_spoken
from alignfuse.encoders.audio import AudioCNN, pad_frames
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.loop import fit_epochs, optimizer_step
from alignfuse.errors import ConfigError
from alignfuse.metrics import modality_gap, retrieval_map, retrieval_metrics
from alignfuse.models.dual_encoder import build_text_encoder
from alignfuse.registry import LOSSES

KEYS = {
    "name",
    "kind",
    "description",
    "data",
    "test_sentences",
    "held_out_voice",
    "train",
    "experiments",
}
TRAIN_KEYS = {"epochs", "batch_size", "lr", "weight_decay", "seed", "embed_dim"}
EXPERIMENT_KEYS = {"name", "text", "text_args", "audio_args", "loss", "loss_args"}


def is_spoken_suite(name_or_path: str) -> bool:
    """Whether a suite (built-in name or YAML path) is of kind ``spoken``."""
    return suite_kind(name_or_path) == "spoken"


class SpeechTextModel(nn.Module):
    """An audio tower and a text tower, each with a linear map into one unit-norm space."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        text: str = "bigru",
        text_args: dict[str, Any] | None = None,
        audio_args: dict[str, Any] | None = None,
        embed_dim: int = 128,
    ) -> None:
        super().__init__()
        self.audio = AudioCNN(**(audio_args or {}))
        text_encoder: Any = build_text_encoder(text, tokenizer, text_args)
        self.text = text_encoder
        self.audio_proj = nn.Linear(self.audio.out_dim, embed_dim)
        self.text_proj = nn.Linear(int(text_encoder.out_dim), embed_dim)

    def encode_audio(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.audio_proj(self.audio(batch["feats"], batch["lengths"])), dim=-1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        prepared = self.text.prepare(texts)  # type: ignore[operator]
        return F.normalize(self.text_proj(self.text(**prepared)), dim=-1)


def split_sentences(data: SpokenData, n_test: int) -> tuple[list[int], list[int]]:
    """The last ``n_test`` sentences are the test set; the rest train."""
    n = len(data.sentences)
    if not 1 <= n_test < n:
        raise ConfigError(f"test_sentences must be in [1, {n - 1}] for {n} sentences, got {n_test}")
    return list(range(n - n_test)), list(range(n - n_test, n))


def _features(model: SpeechTextModel, data: SpokenData) -> list[torch.Tensor]:
    """Normalised log-mel frames of every utterance (computed once)."""
    out = []
    for u in data.utterances:
        b = model.audio.prepare([u.audio], u.sample_rate)
        out.append(b["feats"][0, : int(b["lengths"][0])])
    return out


@torch.no_grad()
def evaluate_speech_text(
    model: SpeechTextModel, data: SpokenData, feats: list[torch.Tensor], sentences: list[int]
) -> dict[str, float]:
    """Retrieval between the given sentences and all their utterances."""
    model.eval()
    index = {s: i for i, s in enumerate(sentences)}
    utts = [i for i, u in enumerate(data.utterances) if u.sentence in index]
    audio = torch.cat(
        [
            model.encode_audio(pad_frames([feats[i] for i in utts[k : k + 64]]))
            for k in range(0, len(utts), 64)
        ]
    )
    text = model.encode_text([data.sentences[s] for s in sentences])
    owner = torch.tensor([index[data.utterances[i].sentence] for i in utts])
    sims = text @ audio.T  # rows: sentences; columns: utterances
    m = retrieval_metrics(sims, owner)
    out = {
        f"t2s_{k[4:]}" if k.startswith("i2t_") else f"s2t_{k[4:]}" if k.startswith("t2i_") else k: v
        for k, v in m.items()
    }
    mp = retrieval_map(sims, owner)
    out.update(
        {
            "t2s_map": mp["i2t_map"],
            "s2t_map": mp["t2i_map"],
            "modality_gap": modality_gap(audio, text),
        }
    )
    best = sims.argmax(0)
    for voice in sorted({data.utterances[i].voice for i in utts}):
        cols = [j for j, i in enumerate(utts) if data.utterances[i].voice == voice]
        out[f"s2t_r1_{voice}"] = float((best[cols] == owner[cols]).double().mean())
    return out


def _by_sentence(data: SpokenData, exclude_voice: str | None = None) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i, u in enumerate(data.utterances):
        if u.voice != exclude_voice:
            out.setdefault(u.sentence, []).append(i)
    return out


def train_speech_text(
    exp: dict[str, Any],
    data: SpokenData,
    train_s: list[int],
    test_s: list[int],
    train_cfg: dict[str, Any],
    run_dir: Path,
    progress: bool | None = None,
    held_out_voice: str | None = None,
) -> dict[str, Any]:
    """Train one speech-text dual encoder (resuming from ``run_dir/checkpoints``) on the
    utterances of ``train_s`` (except those in ``held_out_voice``) and evaluate it on every
    utterance of ``test_s``; return its results row."""
    epochs, bs = int(train_cfg.get("epochs", 30)), int(train_cfg.get("batch_size", 48))
    if bs < 2 or bs > len(train_s):
        raise ConfigError(f"train.batch_size must be in [2, {len(train_s)}], got {bs}")
    seed = int(train_cfg.get("seed", 0))
    by_sentence = _by_sentence(data, exclude_voice=held_out_voice)
    torch.manual_seed(seed)
    tokenizer = Tokenizer.build([data.sentences[s] for s in train_s])
    model = SpeechTextModel(
        tokenizer,
        exp.get("text", "bigru"),
        exp.get("text_args"),
        exp.get("audio_args"),
        int(train_cfg.get("embed_dim", 128)),
    )
    loss_fn = LOSSES.create(exp.get("loss", "info_nce"), **(exp.get("loss_args") or {}))
    holder = nn.ModuleDict({"model": model, "loss": loss_fn})
    params = [p for p in holder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=float(train_cfg.get("lr", 2e-3)),
        weight_decay=float(train_cfg.get("weight_decay", 1e-4)),
    )
    feats = _features(model, data)

    def run_epoch(epoch: int) -> float:
        rng = np.random.default_rng([seed, epoch])  # the batches are a function of the epoch
        order = rng.permutation(train_s)
        losses = []
        for k in range(0, len(order) - bs + 1, bs):
            sents = [int(s) for s in order[k : k + bs]]
            utts = [int(rng.choice(by_sentence[s])) for s in sents]
            a = model.encode_audio(pad_frames([feats[i] for i in utts]))
            t = model.encode_text([data.sentences[s] for s in sents])
            losses.append(optimizer_step(opt, loss_fn(a, t).loss, exp["name"], epoch))
        return float(np.mean(losses))

    t0 = time.perf_counter()
    history = fit_epochs(
        holder,
        opt,
        epochs,
        run_epoch,
        checkpoint_dir=run_dir / "checkpoints",
        progress=progress,
        desc=exp["name"],
    )
    return {
        "name": exp["name"],
        "experiment": exp,
        "metrics": evaluate_speech_text(model, data, feats, test_s),
        "train_seconds": round(time.perf_counter() - t0, 2),
        "trainable_params": sum(p.numel() for p in params),
        "history": history,
    }


def run_spoken_suite(
    name_or_path: str, out: str | Path, log: Any = None, progress: bool | None = None
) -> list[dict[str, Any]]:
    """Train and evaluate every experiment of the suite; write results, leaderboard, report."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    raw = read_checked_suite(name_or_path, KEYS)
    train_cfg = raw.get("train") or {}
    check_keys(train_cfg, TRAIN_KEYS, "spoken train")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_suite = time.perf_counter()
    data = load_spoken(**(raw.get("data") or {}))
    train_s, test_s = split_sentences(data, int(raw.get("test_sentences", 80)))
    held_out = raw.get("held_out_voice")
    voices = sorted({u.voice for u in data.utterances})
    if held_out is not None and held_out not in voices:
        raise ConfigError(f"held_out_voice {held_out!r} is not among the voices {voices}")
    if held_out == REFERENCE[0]:
        raise ConfigError(f"held_out_voice cannot be the reference voice {REFERENCE[0]!r}")
    log(
        f"data: {len(data.sentences)} sentences, {len(data.utterances)} utterances; "
        f"{len(train_s)} train / {len(test_s)} test sentences ({time.perf_counter() - t_suite:.0f} s)"
    )
    rows: list[dict[str, Any]] = []
    experiments = raw.get("experiments") or []
    for n, exp in enumerate(experiments):
        check_keys(exp, EXPERIMENT_KEYS, "spoken experiment")
        header = f"[{n + 1}/{len(experiments)}] {exp['name']}"
        log(f"{header}: training {int(train_cfg.get('epochs', 30))} epochs ...")
        row = train_speech_text(
            exp, data, train_s, test_s, train_cfg, out / exp["name"], progress, held_out
        )
        rows.append(row)
        m = row["metrics"]
        log(
            f"{header}: s2t R@1 {m['s2t_r1']:.3f}, t2s R@1 {m['t2s_r1']:.3f}, "
            f"rsum {m['rsum']:.1f}, train {row['train_seconds']:.0f} s"
        )
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    by_sentence = _by_sentence(data)
    board = _leaderboard(rows)
    (out / "leaderboard.md").write_text(board)
    voice_table = _voices(rows, held_out)
    _plot(rows, out / "curves.png", held_out)
    total = time.perf_counter() - t_suite
    (out / "report.md").write_text(
        f"# alignfuse bench: suite `{raw.get('name', 'spoken')}`\n\n{str(raw.get('description', '')).strip()}\n\n"
        f"Machine: {machine()}, torch {torch.__version__}. "
        f"Whole run: {total:.0f} s.\n\n"
        f"Test: {len(test_s)} unseen sentences, {sum(len(by_sentence[s]) for s in test_s)} utterances "
        f"(chance speech-to-text R@1: {1 / len(test_s):.3f}).\n\n"
        f"## Leaderboard (test; recalls in %)\n\n{board}\n"
        f"## Speech-to-text R@1 by voice (test)\n\n{voice_table}\n"
        "## Training loss and R@1 by voice\n\n![curves](curves.png)\n"
    )
    print(board)
    log(f"suite spoken finished in {total:.0f} s; report: {out / 'report.md'}")
    return rows


def _leaderboard(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("s2t R@1", "s2t_r1"),
        ("s2t R@5", "s2t_r5"),
        ("s2t R@10", "s2t_r10"),
        ("t2s R@1", "t2s_r1"),
        ("t2s R@5", "t2s_r5"),
        ("t2s R@10", "t2s_r10"),
    ]
    body = [
        [r["name"]]
        + [f"{100 * r['metrics'][k]:.1f}" for _, k in cols]
        + [
            f"{r['metrics']['rsum']:.1f}",
            f"{r['metrics']['s2t_map']:.3f}",
            f"{r['metrics']['modality_gap']:.3f}",
        ]
        + [f"{r['train_seconds']:.0f}", f"{r['trainable_params'] / 1e6:.2f}M"]
        for r in rows
    ]
    head = ["model", *(c[0] for c in cols), "rsum", "s2t mAP", "modality gap", "train s", "params"]
    return markdown_table(head, body)


def _voices(rows: list[dict[str, Any]], held_out: str | None) -> str:
    voices = sorted({k[7:] for r in rows for k in r["metrics"] if k.startswith("s2t_r1_")})
    body = [
        [r["name"], *(f"{100 * r['metrics'][f's2t_r1_{v}']:.1f}" for v in voices)] for r in rows
    ]
    head = [f"{v} (not in training)" if v == held_out else v for v in voices]
    return markdown_table(["model", *head], body)


def _plot(rows: list[dict[str, Any]], path: Path, held_out: str | None = None) -> None:
    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in rows:
        ax1.plot(range(1, len(r["history"]) + 1), r["history"], label=r["name"])
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
