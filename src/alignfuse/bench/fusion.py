"""The ``fusion`` benchmark on the built-in shapes data.

1. A CLIP-style dual encoder (CNN + BiGRU, InfoNCE) is trained once; its CNN is then frozen
   and its spatial tokens are the image input of every fusion, so fusions are compared on the
   same visual features (the frozen-encoder regime of BLIP-2).
2. Visual question answering: each fusion, with its own small trainable question encoder
   (word embeddings + BiGRU) and an answer classifier, is trained on the training questions
   with the engine loop; test accuracy overall and per question type, parameters, train
   time, latency; robustness: the image dropped (absent for fusions that allow it, zeros
   otherwise), the question dropped, and the image tokens corrupted by Gaussian noise.
3. Retrieval in two stages: the dual encoder's top ``k`` captions per image re-ranked by the
   interaction scorers (SCAN, FILIP, ...) on the dual encoder's projected region and word
   tokens; R@K, hard-negative accuracy and Winoground scores of each scorer against the
   global dual encoder, and the latency per query.
4. Plots: accuracy and robustness per fusion; SAN's attention over the image per question;
   SCAN's attention per word of a caption over a test image.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from alignfuse._io import write_text_atomic
from alignfuse.bench.report import machine, markdown_table, pyplot
from alignfuse.bench.suite import read_checked_suite, suite_kind
from alignfuse.config import ExperimentConfig, from_dict
from alignfuse.data.shapes import load_shapes
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.engine.evaluate import images_to_tensor
from alignfuse.engine.fit import fit_module, permuted_batches
from alignfuse.interaction.recurrent import attention_weights
from alignfuse.metrics.compositional import hard_negative_accuracy, winoground_scores
from alignfuse.metrics.retrieval import retrieval_metrics
from alignfuse.registry import FUSION, INTERACTIONS

KEYS = {
    "name",
    "kind",
    "description",
    "data",
    "pretrain",
    "vqa",
    "matching",
    "fusions",
    "args",
    "retrieval",
}


def is_fusion_suite(name_or_path: str) -> bool:
    """Whether a suite (built-in name or YAML path) is of kind ``fusion``."""
    return suite_kind(name_or_path) == "fusion"


class QuestionEncoder(nn.Module):
    """Word embeddings and a BiGRU over a question: tokens ``(B, L, 2 hidden)`` and a mask."""

    def __init__(self, vocab_size: int, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 2 * hidden

    def forward(
        self, ids: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        packed = pack_padded_sequence(
            self.embed(ids), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = pad_packed_sequence(
            self.gru(packed)[0], batch_first=True, total_length=ids.shape[1]
        )
        mask = torch.arange(ids.shape[1], device=ids.device)[None] < lengths.to(ids.device)[:, None]
        return out, mask


class VQAModel(nn.Module):
    """Question encoder + a fusion of (image tokens, question tokens) + answer classifier."""

    def __init__(
        self,
        fusion: str,
        image_dim: int,
        vocab_size: int,
        n_answers: int,
        width: int,
        args: dict[str, Any],
    ) -> None:
        super().__init__()
        self.question = QuestionEncoder(vocab_size)
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
        q, qm = self.question(ids, lengths)
        inputs, masks = {"question": q}, {"question": qm}
        if image is not None:
            inputs["image"] = image
        return self.head(self.fusion(inputs, masks))  # type: ignore[no-any-return]


class MatchModel(nn.Module):
    """Caption encoder + a fusion of (image tokens, caption tokens) + a match logit."""

    def __init__(
        self, fusion: str, image_dim: int, vocab_size: int, width: int, args: dict[str, Any]
    ) -> None:
        super().__init__()
        self.text = QuestionEncoder(vocab_size)
        self.fusion = FUSION.create(
            fusion, dims={"image": image_dim, "question": self.text.out_dim}, out_dim=width, **args
        )
        self.head = nn.Sequential(nn.GELU(), nn.Linear(width, 1))

    def forward(
        self, image: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        t, tm = self.text(ids, lengths)
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


def _matching_data(split: Any, tokens: torch.Tensor, tok: Tokenizer, seed: int) -> dict[str, Any]:
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


def run_matching(
    name: str,
    args: dict[str, Any],
    train: dict[str, Any],
    test: dict[str, Any],
    vocab: int,
    cfg: dict[str, Any],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Train one fusion as an image-text matcher (positives vs hard and random negatives)."""
    bs = int(cfg.get("batch_size", 128))
    n = train["images"].shape[0]

    def matching_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        img = train["images"][idx]
        logits, labels = [], []
        for kind, y in (("pos", 1.0), ("hard", 0.0), ("other", 0.0)):
            b = train[kind]
            logits.append(model(img, b["ids"][idx], b["lengths"][idx]))
            labels.append(torch.full((len(idx),), y))
        return F.binary_cross_entropy_with_logits(
            torch.cat(logits), torch.cat(labels), pos_weight=torch.tensor(2.0)
        )

    t0 = time.perf_counter()
    model, _ = fit_module(
        f"matching/{name}",
        lambda: MatchModel(name, train["images"].shape[-1], vocab, int(cfg.get("width", 64)), args),
        lambda epoch: permuted_batches(n, bs, epoch),
        matching_loss,
        epochs=int(cfg.get("epochs", 6)),
        lr=float(cfg.get("lr", 2e-3)),
        weight_decay=1e-4,
        seed=int(cfg.get("seed", 0)),
        progress=False,
    )
    train_s = time.perf_counter() - t0
    with torch.no_grad():
        sc = {
            k: model(test["images"], test[k]["ids"], test[k]["lengths"])
            for k in ("pos", "hard", "other")
        }
    match_acc = float(torch.cat([(sc["pos"] > 0), (sc["other"] <= 0)]).float().mean())
    hard_acc = float((sc["pos"] > sc["hard"]).float().mean())
    random_acc = float((sc["pos"] > sc["other"]).float().mean())
    log(
        f"matching / {name}: match acc {match_acc:.3f}, pos > hard negative {hard_acc:.3f}, pos > random {random_acc:.3f} ({train_s:.0f} s)"
    )
    return {
        "task": "matching",
        "name": name,
        "metrics": {
            "match_acc": match_acc,
            "hard_negative_acc": hard_acc,
            "random_negative_acc": random_acc,
        },
        "train_seconds": round(train_s, 1),
    }


def _pretrain(data: Any, cfg: dict[str, Any], out: Path, log: Callable[[str], None]) -> Any:
    from alignfuse.bench.runner import run_experiment

    base: dict[str, Any] = {
        "name": "fusion_pretrain",
        "data": {"name": "shapes"},
        "model": {"embed_dim": 128},
        "train": {"epochs": 3, "checkpoint_every": 0},
        "eval": {"splits": ["test"], "val_subset": 200},
    }
    for k, v in cfg.items():
        old = base.get(k, {})
        base[k] = {**old, **v} if isinstance(v, dict) and isinstance(old, dict) else v
    exp = from_dict(ExperimentConfig, base)
    row, trainer, _, _ = run_experiment(exp, data, out / "pretrain", progress=False, log=log)
    log(
        f"pretrain: dual encoder t2i R@1 {row['metrics']['test/t2i_r1']:.3f} in {row['train_seconds']:.0f} s"
    )
    assert trainer is not None  # the image_text task is trained by the loop
    model = trainer.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, row


@torch.no_grad()
def _image_tokens(model: Any, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    out = [
        model.image_encoder.tokens(images_to_tensor(images[s : s + batch]))
        for s in range(0, len(images), batch)
    ]
    return torch.cat(out)


def _questions(split: Any) -> tuple[list[int], list[str], list[str], list[str]]:
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


def run_vqa(
    name: str,
    args: dict[str, Any],
    train: dict[str, Any],
    test: dict[str, Any],
    cfg: dict[str, Any],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], VQAModel]:
    """Train one fusion on VQA; return its row (accuracy, robustness, cost) and the model."""
    bs = int(cfg.get("batch_size", 128))
    n = len(train["labels"])

    def vqa_loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        logits = model(
            train["images"][train["owner"][idx]], train["ids"][idx], train["lengths"][idx]
        )
        return F.cross_entropy(logits, train["labels"][idx])

    t0 = time.perf_counter()
    trained, history = fit_module(
        f"vqa/{name}",
        lambda: VQAModel(
            name,
            train["images"].shape[-1],
            len(train["tokenizer"]),
            len(train["answers"]),
            int(cfg.get("width", 64)),
            args,
        ),
        lambda epoch: permuted_batches(n, bs, epoch),
        vqa_loss,
        epochs=int(cfg.get("epochs", 6)),
        lr=float(cfg.get("lr", 2e-3)),
        weight_decay=1e-4,
        seed=int(cfg.get("seed", 0)),
        progress=False,
    )
    assert isinstance(trained, VQAModel)
    model = trained
    train_s = time.perf_counter() - t0

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
        return float(hit.mean()), {
            k: float(hit[kinds == k].mean()) for k in ("color", "count", "exists")
        }

    acc, per_kind = accuracy("clean")
    robust = {f"acc_{m}": accuracy(m)[0] for m in ("no_image", "noisy_image", "no_question")}
    with torch.no_grad():
        one = test["images"][:1]
        t1 = time.perf_counter()
        for _ in range(20):
            model(one, test["ids"][:1], test["lengths"][:1])
        latency_ms = (time.perf_counter() - t1) / 20 * 1000
    n_fusion = sum(p.numel() for p in model.fusion.parameters())
    row = {
        "task": "vqa",
        "name": name,
        "metrics": {"acc": acc, **{f"acc_{k}": v for k, v in per_kind.items()}, **robust},
        "fusion_params": n_fusion,
        "train_seconds": round(train_s, 1),
        "latency_ms": round(latency_ms, 2),
        "loss_first_last": [round(history[0], 4), round(history[-1], 4)],
    }
    log(
        f"vqa / {name}: acc {acc:.3f} (color {per_kind['color']:.2f}, count {per_kind['count']:.2f}, "
        f"exists {per_kind['exists']:.2f}); no image {robust['acc_no_image']:.3f}, noisy image "
        f"{robust['acc_noisy_image']:.3f}; {n_fusion} fusion params, {train_s:.0f} s"
    )
    return row, model


def _vqa_data(
    split: Any, tokens: torch.Tensor, tok: Tokenizer, answers: list[str]
) -> dict[str, Any]:
    owner, qs, ans, kinds = _questions(split)
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
        "tokenizer": tok,
        "answers": answers,
        "image_std": float(tokens.std()),
    }


@torch.no_grad()
def _text_tokens(
    model: Any, texts: list[str], batch: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    toks, masks = [], []
    for s in range(0, len(texts), batch):
        prep = model.prepare_text(texts[s : s + batch])
        t = model.text_encoder.tokens(**prep)
        toks.append(model.text_proj(t))
        masks.append(torch.arange(t.shape[1])[None] < prep["lengths"][:, None])
    width = max(t.shape[1] for t in toks)
    toks = [F.pad(t, (0, 0, 0, width - t.shape[1])) for t in toks]
    masks = [F.pad(m, (0, width - m.shape[1])) for m in masks]
    return torch.cat(toks), torch.cat(masks)


def run_retrieval(
    model: Any, data: Any, cfg: dict[str, Any], log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Dual encoder alone, then its top-k re-ranked by every scorer; plus compositional scores."""
    test = data["test"]
    texts, owner = test.flat_captions()
    with torch.no_grad():
        regions = model.image_proj(_image_tokens(model, test.images))
        img_glob = model.encode_image(images_to_tensor(test.images))
        words, wmask = _text_tokens(model, texts)
        prep = model.prepare_text(texts)
        txt_glob = model.encode_text(prep)
    k = int(cfg.get("k", 16))
    rows, extra = [], {"regions": regions, "words": words, "wmask": wmask, "texts": texts}
    t0 = time.perf_counter()
    sims = img_glob @ txt_glob.T
    dual_ms = (time.perf_counter() - t0) / sims.shape[1] * 1000
    base = retrieval_metrics(sims, torch.as_tensor(owner))
    probe = _probe(model, data)
    comp = _compositional(None, probe)
    rows.append(
        {
            "task": "retrieval",
            "name": "dual_encoder",
            "metrics": {**_recalls(base), **comp},
            "ms_per_query": round(dual_ms, 3),
        }
    )
    log(f"retrieval / dual_encoder: t2i R@1 {base['t2i_r1']:.3f}, R@5 {base['t2i_r5']:.3f}")
    train_tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray] | None = None
    for name in cfg.get("scorers", ["scan", "filip"]):
        args = dict((cfg.get("args") or {}).get(name) or {})
        if name in ("imram", "dime"):
            args.setdefault("dim", regions.shape[-1])
        scorer = INTERACTIONS.create(name, **args)
        train_s = 0.0
        if any(p.requires_grad for p in scorer.parameters()):
            if train_tokens is None:
                tr = data["train"]
                tr_texts, tr_owner = tr.flat_captions()
                with torch.no_grad():
                    tr_regions = model.image_proj(_image_tokens(model, tr.images))
                tr_words, tr_mask = _text_tokens(model, tr_texts)
                train_tokens = (tr_regions, tr_words, tr_mask, tr_owner)
            t0 = time.perf_counter()
            history = train_scorer(scorer, *train_tokens, dict(cfg.get("train") or {}))
            train_s = time.perf_counter() - t0
            log(
                f"retrieval / {name}: trained as a matcher in {train_s:.0f} s (loss {history[0]:.3f} -> {history[-1]:.3f})"
            )
        scorer.eval()
        # stage two: for every caption, re-score its top-k images by the dual encoder
        t0 = time.perf_counter()
        reranked = sims.clone()
        top = sims.topk(k, dim=0).indices  # (k, n_captions)
        with torch.no_grad():
            for c in range(sims.shape[1]):
                cand = top[:, c]
                s = scorer(regions[cand], words[c : c + 1], None, wmask[c : c + 1])[:, 0]
                reranked[cand, c] = 10.0 + s  # re-ranked candidates stay above the rest
        ms = (time.perf_counter() - t0) / sims.shape[1] * 1000 + dual_ms
        m = retrieval_metrics(reranked, torch.as_tensor(owner))
        comp = _compositional(scorer, probe)
        rows.append(
            {
                "task": "retrieval",
                "train_seconds": round(train_s, 1),
                "name": f"dual_encoder + {name} (top {k})",
                "metrics": {**_recalls(m, t2i_only=True), **comp},
                "ms_per_query": round(ms, 3),
            }
        )
        log(
            f"retrieval / {name}: t2i R@1 {m['t2i_r1']:.3f}, R@5 {m['t2i_r5']:.3f}, {ms:.2f} ms per query"
        )
    return rows, extra


def train_scorer(
    scorer: nn.Module,
    regions: torch.Tensor,
    words: torch.Tensor,
    wmask: torch.Tensor,
    owner: np.ndarray,
    cfg: dict[str, Any],
) -> list[float]:
    """Train an interaction scorer as a matcher: batches of images with one caption each,
    symmetric InfoNCE over the batch's all-pairs scores, with the engine loop."""
    bs, scale = int(cfg.get("batch_size", 32)), float(cfg.get("scale", 10.0))
    n_img = regions.shape[0]
    by_image: list[list[int]] = [[] for _ in range(n_img)]
    for c, i in enumerate(owner):
        by_image[int(i)].append(c)

    def batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(n_img, generator=g)
        out = []
        for s in range(0, n_img - bs + 1, bs):
            imgs = order[s : s + bs]
            caps = torch.tensor(
                [
                    by_image[int(i)][int(torch.randint(len(by_image[int(i)]), (1,), generator=g))]
                    for i in imgs
                ]
            )
            out.append((imgs, caps))
        return out

    def loss(net: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        imgs, caps = batch
        logits = scale * net(regions[imgs], words[caps], None, wmask[caps])
        target = torch.arange(len(imgs))
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    _, history = fit_module(
        type(scorer).__name__,
        lambda: scorer,
        batches,
        loss,
        epochs=int(cfg.get("epochs", 2)),
        lr=float(cfg.get("lr", 1e-3)),
        weight_decay=1e-4,
        seed=None,
        progress=False,
    )
    return history


def _recalls(m: dict[str, float], t2i_only: bool = False) -> dict[str, float]:
    keys = ["t2i_r1", "t2i_r5", "t2i_r10"] + ([] if t2i_only else ["i2t_r1", "i2t_r5", "i2t_r10"])
    return {k: m[k] for k in keys}


def _pair_scores(scorer: Any, v: torch.Tensor, w: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """Score image ``i`` with caption ``i`` only (diagonal), for aligned lists."""
    return torch.stack(
        [scorer(v[i : i + 1], w[i : i + 1], None, wm[i : i + 1])[0, 0] for i in range(len(v))]
    )


@dataclass
class _Probe:
    """Everything the compositional scores need, embedded once for every scorer: test images
    with their true caption and its minimal edit, and the Winoground groups; each as global
    vectors (dual encoder) and as projected tokens (interaction scorers)."""

    glob: dict[str, torch.Tensor]
    tokens: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    groups: int


@torch.no_grad()
def _probe(model: Any, data: Any) -> _Probe:
    test = data["test"]
    images: dict[str, np.ndarray] = {}
    texts: dict[str, list[str]] = {}
    negs = test.extras.get("negatives")
    if negs:
        images["neg_img"] = test.images
        texts["pos"] = [test.captions[i][n["positive"]] for i, n in enumerate(negs)]
        texts["neg"] = [n["caption"] for n in negs]
    wino = getattr(data, "winoground", None)
    groups = 0
    if wino is not None and len(wino):
        groups = len(wino)
        images["wino_img"] = wino.images.reshape(-1, *wino.images.shape[2:])
        texts["wino_txt"] = [c for pair in wino.captions for c in pair]
    glob = {k: model.encode_image(images_to_tensor(v)) for k, v in images.items()}
    glob.update({k: model.encode_text(model.prepare_text(v)) for k, v in texts.items()})
    tokens: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {
        k: (model.image_proj(_image_tokens(model, v)), None) for k, v in images.items()
    }
    tokens.update({k: _text_tokens(model, v) for k, v in texts.items()})
    return _Probe(glob, tokens, groups)


@torch.no_grad()
def _compositional(scorer: Any, probe: _Probe) -> dict[str, float]:
    """Hard-negative accuracy (the true caption against its minimal edit) and Winoground
    scores, by the global dual encoder (``scorer=None``) or an interaction scorer on tokens."""
    out: dict[str, float] = {}
    if "pos" in probe.glob:
        if scorer is None:
            img = probe.glob["neg_img"]
            p = (img * probe.glob["pos"]).sum(-1)
            n = (img * probe.glob["neg"]).sum(-1)
        else:
            regions = probe.tokens["neg_img"][0]
            p = _pair_scores(scorer, regions, *probe.tokens["pos"])  # type: ignore[arg-type]
            n = _pair_scores(scorer, regions, *probe.tokens["neg"])  # type: ignore[arg-type]
        out.update(hard_negative_accuracy(p.numpy(), n.numpy()))
    g = probe.groups
    if g:
        if scorer is None:
            vi = probe.glob["wino_img"].reshape(g, 2, -1)
            vt = probe.glob["wino_txt"].reshape(g, 2, -1)
            grid = torch.einsum("gcd,gid->gci", vt, vi)
        else:
            regions = probe.tokens["wino_img"][0]
            words, wm = probe.tokens["wino_txt"]
            grid = torch.zeros(g, 2, 2)
            for gi in range(g):
                pair = slice(2 * gi, 2 * gi + 2)
                grid[gi] = scorer(regions[pair], words[pair], None, wm[pair]).T  # type: ignore[index]
        out.update(winoground_scores(grid.numpy()))
    return out


def run_fusion_suite(
    name_or_path: str, out: str | Path, log: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Run the fusion suite; write results.jsonl, leaderboard.md, report.md and plots."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    raw = read_checked_suite(name_or_path, KEYS)
    fusions = list(raw.get("fusions") or FUSION.names())
    for f in fusions:
        FUSION.get(f)  # unknown names fail here, with a suggestion
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_shapes(**(raw.get("data") or {}))
    log(
        f"data shapes: train {len(data['train'])}, test {len(data['test'])} ({time.perf_counter() - t0:.1f} s)"
    )
    model, pre_row = _pretrain(
        data,
        dict(raw.get("pretrain") or {}, data={"name": "shapes", "args": raw.get("data") or {}}),
        out,
        log,
    )
    rows: list[dict[str, Any]] = []

    def save() -> None:
        write_text_atomic(out / "results.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # VQA on frozen image tokens
    train_tok, test_tok = (
        _image_tokens(model, data["train"].images),
        _image_tokens(model, data["test"].images),
    )
    _, qs, ans, _ = _questions(data["train"])
    tok = Tokenizer.build(qs)
    answers = sorted(set(ans))
    vqa_train = _vqa_data(data["train"], train_tok, tok, answers)
    vqa_test = _vqa_data(data["test"], test_tok, tok, answers)
    majority = float(
        np.mean(np.asarray(vqa_test["labels"]) == np.bincount(vqa_train["labels"]).argmax())
    )
    log(
        f"vqa: {len(vqa_train['labels'])} train / {len(vqa_test['labels'])} test questions, {len(answers)} answers, majority {majority:.3f}"
    )
    cfg = dict(raw.get("vqa") or {})
    models = {}
    for f in fusions:
        row, m = run_vqa(
            f, dict((raw.get("args") or {}).get(f) or {}), vqa_train, vqa_test, cfg, log
        )
        rows.append(row)
        models[f] = m
        save()
    # image-text matching with hard negatives
    mcfg = dict(raw.get("matching") or {})
    if mcfg.get("epochs", 1) and data["test"].extras.get("negatives"):
        ctok = Tokenizer.build([c for caps in data["train"].captions for c in caps])
        m_train = _matching_data(data["train"], train_tok, ctok, 0)
        m_test = _matching_data(data["test"], test_tok, ctok, 1)
        for f in mcfg.get("fusions") or fusions:
            rows.append(
                run_matching(
                    f,
                    dict((raw.get("args") or {}).get(f) or {}),
                    m_train,
                    m_test,
                    len(ctok),
                    mcfg,
                    log,
                )
            )
            save()
    # two-stage retrieval and compositional scores
    ret_rows, extra = run_retrieval(model, data, dict(raw.get("retrieval") or {}), log)
    rows += ret_rows
    save()
    vqa_rows = [r for r in rows if r["task"] == "vqa"]
    match_rows = [r for r in rows if r["task"] == "matching"]
    board = (
        _vqa_board(vqa_rows, majority)
        + "\n"
        + (_matching_board(match_rows) + "\n" if match_rows else "")
        + _retrieval_board(ret_rows)
    )
    (out / "leaderboard.md").write_text(board)
    _plot_vqa(vqa_rows, out / "vqa.png")
    if "san" in models:
        _plot_san(models["san"], data["test"], vqa_test, out / "san_attention.png")
    _plot_scan_words(extra, data["test"], out / "scan_attention.png")
    (out / "report.md").write_text(
        f"# alignfuse bench: suite `{raw.get('name', 'fusion')}`\n\n{str(raw.get('description', '')).strip()}\n\n"
        f"Machine: {machine()}. Pretrained dual encoder: test t2i R@1 "
        f"{pre_row['metrics']['test/t2i_r1']:.3f} ({pre_row['train_seconds']:.0f} s).\n\n"
        f"## Leaderboard\n\n{board}\n![vqa](vqa.png)\n\n## Attention maps\n\n"
        "SAN's two hops over the image for test questions:\n\n![san](san_attention.png)\n\n"
        "SCAN's attention of each word of a test caption over the image regions:\n\n![scan](scan_attention.png)\n"
    )
    print(board)
    return rows


def _vqa_board(rows: list[dict[str, Any]], majority: float) -> str:
    header = ["fusion", "acc", "color", "count", "exists", "no image", "noisy image"]
    header += ["no question", "fusion params", "train s", "ms / question"]
    keys = ("acc", "acc_color", "acc_count", "acc_exists", "acc_no_image", "acc_noisy_image")
    body = [
        [
            r["name"],
            *(f"{r['metrics'][k]:.3f}" for k in (*keys, "acc_no_question")),
            f"{r['fusion_params']:,}",
            f"{r['train_seconds']:.0f}",
            f"{r['latency_ms']:.2f}",
        ]
        for r in sorted(rows, key=lambda r: -r["metrics"]["acc"])
    ]
    return markdown_table(header, body, f"VQA (majority answer: {majority:.3f})")


def _matching_board(rows: list[dict[str, Any]]) -> str:
    header = ["fusion", "match acc", "true > hard negative", "true > random caption", "train s"]
    keys = ("match_acc", "hard_negative_acc", "random_negative_acc")
    body = [
        [r["name"], *(f"{r['metrics'][k]:.3f}" for k in keys), f"{r['train_seconds']:.0f}"]
        for r in sorted(rows, key=lambda r: -r["metrics"]["hard_negative_acc"])
    ]
    title = "Image-text matching (test: each image with its caption, its minimal edit, another image's caption)"
    return markdown_table(header, body, title)


def _retrieval_board(rows: list[dict[str, Any]]) -> str:
    header = ["scorer", "t2i R@1", "t2i R@5", "t2i R@10", "hard-negative acc", "wino text"]
    header += ["wino image", "wino group", "ms / query"]
    keys = ("t2i_r1", "t2i_r5", "t2i_r10", "hard_negative_acc", "wino_text", "wino_image")
    body = []
    for r in rows:
        cells = [r["metrics"].get(k) for k in (*keys, "wino_group")]
        body.append(
            [
                r["name"],
                *("-" if c is None else f"{c:.3f}" for c in cells),
                f"{r['ms_per_query']:.3f}",
            ]
        )
    title = "Retrieval (test, text to image) and compositional scores"
    return markdown_table(header, body, title)


def _plot_vqa(rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    rows = sorted(rows, key=lambda r: -r["metrics"]["acc"])
    names = [r["name"] for r in rows]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, (key, label) in enumerate(
        (
            ("acc", "clean"),
            ("acc_noisy_image", "noisy image"),
            ("acc_no_image", "no image"),
            ("acc_no_question", "no question"),
        )
    ):
        ax.bar(x + (i - 1.5) * 0.2, [r["metrics"][key] for r in rows], 0.2, label=label)
    ax.set_xticks(x, names, rotation=30, fontsize=8)
    ax.set(
        ylabel="VQA accuracy (test)",
        title="fusions on shapes VQA: clean and with a modality degraded",
    )
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _overlay(ax: Any, image: np.ndarray, weights: np.ndarray, title: str) -> None:
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
def _plot_san(model: VQAModel, split: Any, test: dict[str, Any], path: Path, n: int = 4) -> None:
    plt = pyplot()
    model.eval()
    idx = list(range(n))
    logits = model(test["images"][test["owner"][idx]], test["ids"][idx], test["lengths"][idx])
    att = model.fusion.last_attention  # (n, hops, regions)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2.1 * n))
    for r, i in enumerate(idx):
        img = split.images[int(test["owner"][i])]
        q = " ".join(
            test["tokenizer"].decode(test["ids"][i][: test["lengths"][i]].tolist()).split()
        )
        pred = test["answers"][int(logits[r].argmax())]
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"{q}\n-> {pred}", fontsize=6)
        axes[r, 0].axis("off")
        for h in range(2):
            _overlay(axes[r, h + 1], img, att[r, h].numpy(), f"hop {h + 1}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def _plot_scan_words(extra: dict[str, Any], split: Any, path: Path) -> None:
    """SCAN t2i attention of each word of the first test caption over its image's regions."""
    plt = pyplot()
    regions, words, wmask, texts = extra["regions"], extra["words"], extra["wmask"], extra["texts"]
    n_words = int(wmask[0].sum())
    # SCAN t2i: clipped cosines normalised over the words, softmax over the regions
    q = words[:1, :n_words]
    alpha = attention_weights(
        q,
        regions[:1],
        torch.ones(1, n_words, dtype=torch.bool),
        torch.ones(1, regions.shape[1], dtype=torch.bool),
        9.0,
    )[0, 0]  # (words, regions)
    cols = min(n_words, 8)
    fig, axes = plt.subplots(1, cols + 1, figsize=(1.8 * (cols + 1), 2.2))
    axes[0].imshow(split.images[0])
    axes[0].set_title(texts[0], fontsize=6)
    axes[0].axis("off")
    tokens = texts[0].split()
    for j in range(cols):
        _overlay(
            axes[j + 1], split.images[0], alpha[j].numpy(), tokens[j] if j < len(tokens) else "?"
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
