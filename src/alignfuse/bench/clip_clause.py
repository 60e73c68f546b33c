"""Clip-to-clause localisation on the ``clips`` data: learned frame and clause embeddings,
then every frame assigned to one of its clip's ordered clauses by a localisation method.

Embeddings: a small CNN reads each frame with its difference to the next frame (so motion is
visible); a bag-of-words encoder reads each clause; both are trained on the training clips so
that each frame scores its own clause highest among its clip's clauses (cross-entropy over
cosine similarities). Methods, all on the same embeddings:

- ``uniform``: equal spans (no embeddings), the naive baseline;
- ``argmax``: each frame's most similar clause, order ignored;
- ``dtw``: the optimal monotone warping path through ``1 - cosine``;
- ``ot``: entropic OT between frames and clauses (uniform masses) with a positional prior;
- ``graph``: a :class:`~alignfuse.temporal.GraphMatcher` (frames and clauses as chains)
  trained on the training clips; ``graph_dtw`` decodes its log-probabilities monotonically.

Scores: frame accuracy (share of frames given their true clause) and the mean IoU of each
clause's predicted and true frame span.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.data.clips import Clip, ClipSplit
from alignfuse.engine.fit import fit_module, permuted_batches
from alignfuse.temporal import GraphMatcher, chain_adjacency, warping_path
from alignfuse.transport import sinkhorn

METHODS = ("uniform", "argmax", "dtw", "ot", "graph", "graph_dtw")


class FrameEncoder(nn.Module):
    """Frame + next-frame difference ``(T, 6, 32, 32)`` -> L2-normalised ``(T, dim)``."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(6, 32, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


class ClauseEncoder(nn.Module):
    """Mean of word embeddings -> L2-normalised ``(K, dim)``."""

    def __init__(self, vocab: list[str], dim: int = 64) -> None:
        super().__init__()
        self.index = {w: i for i, w in enumerate(vocab)}
        self.bag = nn.EmbeddingBag(len(vocab), dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def forward(self, clauses: list[str]) -> torch.Tensor:
        ids: list[int] = []
        offsets: list[int] = []
        for c in clauses:
            offsets.append(len(ids))
            ids += [self.index[w] for w in c.split() if w in self.index]
        dev = self.bag.weight.device
        out = self.bag(torch.tensor(ids, device=dev), torch.tensor(offsets, device=dev))
        return F.normalize(self.proj(out), dim=-1)


def frame_input(clip: Clip) -> torch.Tensor:
    """``(T, 6, H, W)``: each frame in [0, 1] and its difference to the next (0 for the last)."""
    x = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255.0
    diff = torch.cat((x[1:] - x[:-1], torch.zeros_like(x[:1])))
    return torch.cat((x, diff), dim=1)


@dataclass
class Embedder:
    frames: FrameEncoder
    clauses: ClauseEncoder
    temperature: float = 0.1

    @torch.no_grad()
    def __call__(self, clip: Clip) -> tuple[torch.Tensor, torch.Tensor]:
        self.frames.eval()
        self.clauses.eval()
        return self.frames(frame_input(clip)), self.clauses(clip.clauses)


def train_embedder(
    train: ClipSplit,
    vocab: list[str],
    *,
    dim: int = 64,
    epochs: int = 12,
    clips_per_step: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
) -> tuple[Embedder, list[float]]:
    """Train the frame and clause encoders with the engine loop; return them and the loss."""
    inputs = [frame_input(c) for c in train.clips]
    labels = [torch.from_numpy(c.labels()) for c in train.clips]
    temperature = 0.1

    def batches(epoch: int) -> list[list[int]]:
        parts = permuted_batches(len(inputs), clips_per_step, seed * 7919 + epoch)
        return [p.tolist() for p in parts]

    def loss(both: nn.Module, idx: list[int]) -> torch.Tensor:
        emb: torch.Tensor = both.get_submodule("frames")(torch.cat([inputs[i] for i in idx]))
        total, at = emb.new_zeros(()), 0
        for i in idx:
            t = len(inputs[i])
            logits = emb[at : at + t] @ both.get_submodule("clauses")(train.clips[i].clauses).T
            total = total + F.cross_entropy(logits / temperature, labels[i], reduction="sum")
            at += t
        return total / at

    both, history = fit_module(
        "clip-clause embedder",
        lambda: nn.ModuleDict({"frames": FrameEncoder(dim), "clauses": ClauseEncoder(vocab, dim)}),
        batches,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=1e-4,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    frames, clauses = both.get_submodule("frames"), both.get_submodule("clauses")
    assert isinstance(frames, FrameEncoder) and isinstance(clauses, ClauseEncoder)
    return Embedder(frames, clauses, temperature), history


def train_matcher(
    train: ClipSplit,
    embed: Embedder,
    *,
    hidden: int = 64,
    epochs: int = 10,
    clips_per_step: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
) -> tuple[GraphMatcher, list[float]]:
    """Train a graph matcher on frozen embeddings: NLL of each frame's true clause."""
    pairs = [(*embed(c), torch.from_numpy(c.labels())) for c in train.clips]

    def batches(epoch: int) -> list[list[int]]:
        parts = permuted_batches(len(pairs), clips_per_step, seed * 104729 + epoch)
        return [p.tolist() for p in parts]

    def loss(net: nn.Module, idx: list[int]) -> torch.Tensor:
        total, frames = torch.zeros(()), 0
        for i in idx:
            f, c, y = pairs[i]
            logp = net(f, c, chain_adjacency(len(f)), chain_adjacency(len(c)))
            total = total + F.nll_loss(logp, y, reduction="sum")
            frames += len(f)
        return total / frames

    trained, history = fit_module(
        "graph matcher",
        lambda: GraphMatcher(pairs[0][0].shape[1], hidden=hidden),
        batches,
        loss,
        epochs=epochs,
        lr=lr,
        weight_decay=1e-4,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        progress=progress,
    )
    assert isinstance(trained, GraphMatcher)
    matcher = trained
    return matcher, history


def _last_per_row(path: torch.Tensor, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    for i, j in path.tolist():
        out[i] = j
    return out


def localize(
    method: str,
    n_frames: int,
    frames: torch.Tensor | None,
    clauses: torch.Tensor | None,
    *,
    n_clauses: int | None = None,
    matcher: GraphMatcher | None = None,
    ot_reg: float = 0.05,
    position_weight: float = 1.0,
) -> np.ndarray:
    """Clause index ``(T,)`` of every frame by ``method`` (see the module docstring)."""
    if method == "uniform":
        k = n_clauses if n_clauses is not None else (clauses.shape[0] if clauses is not None else 0)
        return np.minimum((np.arange(n_frames) * k) // n_frames, k - 1)
    if frames is None or clauses is None:
        raise ValueError(f"method {method!r} needs frame and clause embeddings")
    sim = frames @ clauses.T
    if method == "argmax":
        return np.asarray(sim.argmax(1).numpy())
    if method == "dtw":
        path, _ = warping_path(1.0 - sim)
        return _last_per_row(path, n_frames)
    if method == "ot":
        pos_f = torch.arange(n_frames, dtype=sim.dtype) / max(n_frames - 1, 1)
        pos_c = torch.arange(sim.shape[1], dtype=sim.dtype) / max(sim.shape[1] - 1, 1)
        cost = (1.0 - sim) + position_weight * (pos_f[:, None] - pos_c[None, :]).pow(2)
        res = sinkhorn(None, None, cost.double(), reg=ot_reg, max_iter=2000, tol=1e-6, warn=False)
        return np.asarray(res.plan.argmax(1).numpy())
    if method in ("graph", "graph_dtw"):
        if matcher is None:
            raise ValueError(f"method {method!r} needs a trained matcher")
        with torch.no_grad():
            logp = matcher(
                frames, clauses, chain_adjacency(n_frames), chain_adjacency(clauses.shape[0])
            )
        if method == "graph":
            return np.asarray(logp.argmax(1).numpy())
        path, _ = warping_path(-logp.double())
        return _last_per_row(path, n_frames)
    raise ValueError(f"unknown localisation method {method!r}; known: {', '.join(METHODS)}")


def scores(clips: list[Clip], predictions: list[np.ndarray]) -> dict[str, float]:
    """Frame accuracy (over all frames) and mean clause-span IoU (over all clauses)."""
    correct = total = 0
    ious = []
    for clip, pred in zip(clips, predictions, strict=True):
        truth = clip.labels()
        correct += int((pred == truth).sum())
        total += len(truth)
        for k, (a, b) in enumerate(clip.spans):
            hit = np.flatnonzero(pred == k)
            if len(hit) == 0:
                ious.append(0.0)
                continue
            pa, pb = int(hit.min()), int(hit.max()) + 1
            inter = max(0, min(b, pb) - max(a, pa))
            ious.append(inter / (max(b, pb) - min(a, pa)))
    return {"frame_acc": correct / total, "span_iou": float(np.mean(ious))}


def run_clip_clause(
    train: ClipSplit,
    test: ClipSplit,
    vocab: list[str],
    methods: list[str],
    cfg: dict[str, Any],
    log: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train what the methods need, localise every test clip with each; rows and examples."""
    import time

    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown localisation method {m!r}; known: {', '.join(METHODS)}")
    t0 = time.perf_counter()
    embed, h_embed = train_embedder(train, vocab, **(cfg.get("embedder") or {}))
    t_embed = time.perf_counter() - t0
    log(f"clips: embedder trained in {t_embed:.1f} s (loss {h_embed[0]:.3f} -> {h_embed[-1]:.3f})")
    matcher, t_match = None, 0.0
    if any(m.startswith("graph") for m in methods):
        t0 = time.perf_counter()
        matcher, h_match = train_matcher(train, embed, **(cfg.get("matcher") or {}))
        t_match = time.perf_counter() - t0
        log(
            f"clips: graph matcher trained in {t_match:.1f} s (loss {h_match[0]:.3f} -> {h_match[-1]:.3f})"
        )
    embedded = [embed(c) for c in test.clips]
    rows, examples = [], {}
    for m in methods:
        t0 = time.perf_counter()
        preds = [
            localize(
                m,
                len(c.frames),
                f,
                k,
                n_clauses=len(c.clauses),
                matcher=matcher,
                **(cfg.get("ot") or {}) if m == "ot" else {},
            )
            for c, (f, k) in zip(test.clips, embedded, strict=True)
        ]
        sc = scores(test.clips, preds)
        train_s = 0.0 if m == "uniform" else t_embed + (t_match if m.startswith("graph") else 0.0)
        rows.append(
            {
                "task": "clips_to_clauses",
                "name": m,
                "metrics": sc,
                "train_seconds": round(train_s, 1),
                "seconds": round(time.perf_counter() - t0, 2),
            }
        )
        examples[m] = preds[:4]
        log(
            f"clips_to_clauses / {m}: frame accuracy {sc['frame_acc']:.3f}, span IoU {sc['span_iou']:.3f}"
        )
    return rows, examples
