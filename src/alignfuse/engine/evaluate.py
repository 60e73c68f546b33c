"""Embedding and scoring a model on a split: retrieval and compositional probes. Dual encoders
are scored by the dot products of their embeddings; pairwise models (``model.pairwise``, e.g.
SCAN) by their own score of every image-caption pair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignfuse.data.base import ImageTextData, ImageTextSplit
from alignfuse.metrics import (
    hard_negative_accuracy,
    retrieval_map,
    retrieval_metrics,
    winoground_scores,
)
from alignfuse.metrics.diagnostics import embedding_diagnostics


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``uint8 (B, H, W, 3)`` to normalised float ``(B, 3, H, W)`` on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return (x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.inference_mode()
def embed_images(model: Any, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Joint-space embeddings of images, in batches."""
    dev = model_device(model)
    out = [
        model.encode_image(images_to_tensor(images[i : i + batch_size], dev))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


@torch.inference_mode()
def embed_texts(model: Any, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Joint-space embeddings of strings, in batches."""
    dev = model_device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        prep = model.prepare_text(texts[i : i + batch_size])
        out.append(model.encode_text({k: v.to(dev) for k, v in prep.items()}))
    return torch.cat(out)


@torch.inference_mode()
def image_tokens(model: Any, images: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """A pairwise model's projected region tokens of images, in batches."""
    dev = model_device(model)
    return torch.cat(
        [
            model.image_tokens(images_to_tensor(images[i : i + batch_size], dev))
            for i in range(0, len(images), batch_size)
        ]
    )


@torch.inference_mode()
def text_tokens(
    model: Any, texts: Sequence[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """A pairwise model's projected word tokens of strings and their mask, padded to the
    longest caption."""
    dev = model_device(model)
    parts = []
    for i in range(0, len(texts), batch_size):
        prep = model.prepare_text(texts[i : i + batch_size])
        parts.append(model.text_tokens({k: v.to(dev) for k, v in prep.items()}))
    width = max(w.shape[1] for w, _ in parts)
    words = torch.cat([F.pad(w, (0, 0, 0, width - w.shape[1])) for w, _ in parts])
    mask = torch.cat([F.pad(m, (0, width - m.shape[1])) for _, m in parts])
    return words, mask


@torch.inference_mode()
def pair_scores(
    model: Any, images: np.ndarray, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """The ``(n_images, n_texts)`` score matrix of a pairwise model (SCAN)."""
    regions = image_tokens(model, images, batch_size)
    out: torch.Tensor = model.score(regions, *text_tokens(model, texts, batch_size))
    return out


def evaluate_split(model: Any, split: ImageTextSplit, batch_size: int = 256) -> dict[str, Any]:
    """Retrieval metrics (R@K, ranks, mAP), hard-negative accuracy where the split has
    negatives, and for dual encoders the embedding diagnostics (modality gap, alignment,
    uniformity); a pairwise model has no embedding to measure them on."""
    was_training = model.training
    model.eval()
    pairwise = bool(getattr(model, "pairwise", False))
    try:
        texts, owner = split.flat_captions()
        if pairwise:  # no per-item embedding: the model scores every pair
            sims = pair_scores(model, split.images, texts, batch_size)
        else:
            img = embed_images(model, split.images, batch_size)
            txt = embed_texts(model, texts, batch_size)
            sims = img @ txt.T
        out: dict[str, Any] = retrieval_metrics(sims, torch.from_numpy(owner))
        out.update(retrieval_map(sims, torch.from_numpy(owner)))
        if not pairwise:
            out.update(embedding_diagnostics(img, txt, torch.from_numpy(owner)))
        negs = split.extras.get("negatives")
        if negs:
            pos_idx = np.cumsum([0] + [len(c) for c in split.captions[:-1]])
            pos = sims[
                torch.arange(len(split)),
                torch.from_numpy(pos_idx + [n["positive"] for n in negs]),
            ]
            neg_texts = [n["caption"] for n in negs]
            if pairwise:
                neg = pair_scores(model, split.images, neg_texts, batch_size).diagonal()
            else:
                neg = (img * embed_texts(model, neg_texts, batch_size)).sum(1)
            out.update(hard_negative_accuracy(pos.cpu().numpy(), neg.cpu().numpy()))
        out["_sims"] = sims
        return out
    finally:
        model.train(was_training)


def evaluate_winoground(model: Any, data: ImageTextData, batch_size: int = 256) -> dict[str, float]:
    """Winoground text / image / group scores on the dataset's groups."""
    wino = data.winoground
    if wino is None or len(wino) == 0:
        return {}
    was_training = model.training
    model.eval()
    try:
        g = len(wino)
        images = wino.images.reshape(-1, *wino.images.shape[2:])
        captions = [c for pair in wino.captions for c in pair]
        if getattr(model, "pairwise", False):
            full = pair_scores(model, images, captions, batch_size)  # (2g images, 2g captions)
            blocks = full.reshape(g, 2, g, 2).diagonal(dim1=0, dim2=2)  # (2 i, 2 c, g)
            scores = blocks.permute(2, 1, 0)  # (g, caption, image)
        else:
            img = embed_images(model, images, batch_size).reshape(g, 2, -1)
            txt = embed_texts(model, captions, batch_size).reshape(g, 2, -1)
            scores = torch.einsum("gcd,gid->gci", txt, img)
        return winoground_scores(scores.cpu().numpy())
    finally:
        model.train(was_training)


def evaluate(
    model: Any, data: ImageTextData, splits: Sequence[str], batch_size: int = 256
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Every metric on every split, flat keys ``"<split>/<metric>"``; also the score
    matrices by split (for reports)."""
    metrics: dict[str, float] = {}
    sims: dict[str, torch.Tensor] = {}
    for name in splits:
        if name not in data.splits:
            continue
        res = evaluate_split(model, data[name], batch_size)
        sims[name] = res.pop("_sims")
        metrics.update({f"{name}/{k}": float(v) for k, v in res.items()})
    metrics.update(
        {f"winoground/{k}": v for k, v in evaluate_winoground(model, data, batch_size).items()}
    )
    return metrics, sims
