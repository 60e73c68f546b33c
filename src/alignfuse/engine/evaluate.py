"""Embedding and scoring a model on a split: retrieval and compositional probes. Models are told
apart by what they can do (:mod:`alignfuse.models.protocols`). Dual encoders
are scored by the dot products of their embeddings; pairwise scorers (SCAN) by their own
score of every image-caption pair; two-stage rankers (ALBEF, the Q-Former) rank by their embeddings and re-score each query's top ``k`` with their fusion
(:func:`rerank`), and the first stage's metrics are kept with the prefix ``itc_``;
caption generators (the prefix LM) by their greedy captions (BLEU,
ROUGE-L, CIDEr-D) and match a pair by the caption's likelihood."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignfuse.data.base import ImageTextData, ImageTextSplit
from alignfuse.encoders.image import IMAGE_MEAN, IMAGE_STD
from alignfuse.errors import ConfigError
from alignfuse.metrics import (
    hard_negative_accuracy,
    retrieval_map,
    retrieval_metrics,
    winoground_scores,
)
from alignfuse.metrics.diagnostics import embedding_diagnostics
from alignfuse.models.protocols import (
    CaptionGenerator,
    OwnSimilarity,
    PairwiseScorer,
    TwoStageRanker,
)


def images_to_tensor(images: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """``uint8 (B, H, W, 3)`` to normalised float ``(B, 3, H, W)`` on ``device``
    (``(x / 255 - IMAGE_MEAN) / IMAGE_STD``); precomputed features (a float array) pass
    through as float32."""
    features = np.issubdtype(images.dtype, np.floating)
    arr = np.asarray(images, dtype=np.float32 if features else None)
    if not (arr.flags.writeable and arr.flags.c_contiguous):  # a memory-mapped slice
        arr = np.array(arr, order="C")
    x = torch.from_numpy(arr).to(device)
    if features:
        return x
    # one float copy, scaled in place (3x faster than out-of-place arithmetic)
    return (
        x.permute(0, 3, 1, 2).float().mul_(1.0 / (255.0 * IMAGE_STD)).sub_(IMAGE_MEAN / IMAGE_STD)
    )


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


def _pad_words(
    words: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches of word tokens ``(b, L_i, D)`` and masks ``(b, L_i)``, padded to the longest
    ``L_i`` and concatenated."""
    width = max(w.shape[1] for w in words)
    return (
        torch.cat([F.pad(w, (0, 0, 0, width - w.shape[1])) for w in words]),
        torch.cat([F.pad(m, (0, width - m.shape[1])) for m in masks]),
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
    return _pad_words([w for w, _ in parts], [m for _, m in parts])


@torch.inference_mode()
def pair_scores(
    model: Any, images: np.ndarray, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """The ``(n_images, n_texts)`` score matrix of a pairwise model (SCAN)."""
    regions = image_tokens(model, images, batch_size)
    out: torch.Tensor = model.score(regions, *text_tokens(model, texts, batch_size))
    return out


@torch.inference_mode()
def two_stage_images(
    model: Any, images: np.ndarray, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """A two-stage model's (ALBEF's) unit embeddings and fusion region tokens of images."""
    dev = model_device(model)
    parts = [
        model.image_features(images_to_tensor(images[i : i + batch_size], dev))
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat([e for e, _ in parts]), torch.cat([r for _, r in parts])


@torch.inference_mode()
def two_stage_texts(
    model: Any, texts: Sequence[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A two-stage model's unit embeddings, fusion word tokens and word mask of strings
    (padded to the longest caption)."""
    dev = model_device(model)
    parts = []
    for i in range(0, len(texts), batch_size):
        prep = model.prepare_text(texts[i : i + batch_size])
        parts.append(model.text_features({k: v.to(dev) for k, v in prep.items()}))
    words, mask = _pad_words([w for _, w, _ in parts], [m for _, _, m in parts])
    return torch.cat([e for e, _, _ in parts]), words, mask


def first_stage(
    model: Any, img: torch.Tensor, txt: torch.Tensor, paired: bool = False
) -> torch.Tensor:
    """A two-stage model's first-stage similarity of its image and text embeddings: ``(N, M)``
    of all pairs, or ``(N,)`` of paired rows. The model's own ``similarity`` /
    ``pair_similarity`` when it has them (BLIP-2: the best of each image's queries), else
    dot products."""
    if isinstance(model, OwnSimilarity):
        out: torch.Tensor = (
            model.pair_similarity(img, txt) if paired else model.similarity(img, txt)
        )
        return out
    return (img * txt).sum(1) if paired else img @ txt.T


@torch.inference_mode()
def match_pairs(
    model: Any,
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    image_idx: torch.Tensor,
    text_idx: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """``model.match_scores`` of the pairs ``(image_idx[j], text_idx[j])``, in batches;
    each batch passes its distinct images once, with ``region_index``."""
    out = []
    for i in range(0, len(image_idx), batch_size):
        uniq, inverse = torch.unique(image_idx[i : i + batch_size], return_inverse=True)
        txt = text_idx[i : i + batch_size]
        out.append(model.match_scores(regions[uniq], words[txt], word_mask[txt], inverse))
    return torch.cat(out) if out else regions.new_zeros(0)


class InteractionPairs:
    """An all-pairs interaction scorer (SCAN, FILIP, IMRAM, DIME: ``scorer(regions, words,
    region_mask, word_mask) -> (n_images, n_texts)``) as the ``match_scores`` of
    :func:`rerank`: each batch's pairs are scored image by image, every image against the
    texts it is paired with."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer

    def match_scores(
        self,
        regions: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        region_index: torch.Tensor,
    ) -> torch.Tensor:
        out = regions.new_empty(len(region_index))
        for u in torch.unique(region_index).tolist():
            rows = (region_index == u).nonzero()[:, 0]
            out[rows] = self.scorer(regions[u : u + 1], words[rows], None, word_mask[rows])[0]
        return out


@torch.inference_mode()
def rerank(
    model: Any,
    sims: torch.Tensor,
    regions: torch.Tensor,
    words: torch.Tensor,
    word_mask: torch.Tensor,
    k: int,
    batch_size: int = 256,
    add_first_stage: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-stage retrieval, ALBEF's protocol: every image's top ``k`` captions and every
    caption's top ``k`` images by the first-stage ``sims (n_images, n_texts)`` are
    re-scored by ``model.match_scores + sims`` (each pair once; ``add_first_stage=False``:
    by ``model.match_scores`` alone). An all-pairs interaction scorer re-ranks through
    :class:`InteractionPairs`.

    Returns ``(i2t, t2i)`` score matrices: in ``i2t`` each image's re-scored captions rank
    above its others, which keep their first-stage order; ``t2i`` likewise per caption.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1 (candidates re-scored per query), got {k}")
    if sims.ndim != 2 or regions.shape[0] != sims.shape[0] or words.shape[0] != sims.shape[1]:
        raise ValueError(
            f"sims {tuple(sims.shape)} must be (n_images, n_texts) for regions of "
            f"{regions.shape[0]} images and words of {words.shape[0]} texts"
        )
    n_img, n_txt = sims.shape
    top_t = sims.topk(min(k, n_txt), dim=1).indices  # (n_img, k)
    top_i = sims.topk(min(k, n_img), dim=0).indices  # (k, n_txt)
    rows_a = torch.arange(n_img, device=sims.device)[:, None].expand_as(top_t).reshape(-1)
    cols_b = torch.arange(n_txt, device=sims.device)[None, :].expand_as(top_i).reshape(-1)
    flat_a = rows_a * n_txt + top_t.reshape(-1)
    flat_b = top_i.reshape(-1) * n_txt + cols_b
    pairs, inverse = torch.unique(torch.cat([flat_a, flat_b]), return_inverse=True)
    img_idx, txt_idx = pairs // n_txt, pairs % n_txt
    match = match_pairs(model, regions, words, word_mask, img_idx, txt_idx, batch_size)
    scores = match.to(sims.dtype)
    if add_first_stage:
        scores = scores + sims[img_idx, txt_idx]
    # everything not re-scored sits below every re-scored pair, in first-stage order
    below = sims - (sims.max() - scores.min() + 1.0)
    i2t, t2i = below.clone(), below.clone()
    na = len(flat_a)
    i2t.view(-1)[flat_a] = scores[inverse[:na]]
    t2i.view(-1)[flat_b] = scores[inverse[na:]]
    return i2t, t2i


def two_stage_metrics(
    i2t: torch.Tensor, t2i: torch.Tensor, owner: torch.Tensor
) -> dict[str, float]:
    """Retrieval metrics (R@K, ranks, mAP) with image-to-text read from ``i2t`` and
    text-to-image from ``t2i``; ``rsum`` sums the six recalls of those."""
    a = {**retrieval_metrics(i2t, owner), **retrieval_map(i2t, owner)}
    b = {**retrieval_metrics(t2i, owner), **retrieval_map(t2i, owner)}
    out = {k: v for k, v in a.items() if k.startswith("i2t_")}
    out.update({k: v for k, v in b.items() if k.startswith("t2i_")})
    out["rsum"] = 100.0 * sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10))
    return out


@torch.inference_mode()
def generate_captions(model: Any, images: np.ndarray, batch_size: int = 256) -> list[str]:
    """A generative model's greedy captions of images, in batches."""
    dev = model_device(model)
    out: list[str] = []
    for i in range(0, len(images), batch_size):
        out += model.generate(images_to_tensor(images[i : i + batch_size], dev))
    return out


@torch.inference_mode()
def caption_likelihoods(
    model: Any, images: np.ndarray, texts: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """A generative model's score of each pair ``(images[j], texts[j])``: the caption's mean
    log-probability per token given the image."""
    if len(images) != len(texts):
        raise ValueError(f"images and texts disagree: {len(images)} and {len(texts)} pairs")
    dev = model_device(model)
    out = []
    for i in range(0, len(texts), batch_size):
        prefix = model.prefix(images_to_tensor(images[i : i + batch_size], dev))
        prep = model.prepare_text(texts[i : i + batch_size])
        out.append(model.log_likelihood(prefix, {k: v.to(dev) for k, v in prep.items()}))
    return torch.cat(out)


def _hard_negatives(split: ImageTextSplit) -> tuple[torch.Tensor, list[str]] | None:
    """Where the split has negatives: each image's positive caption as an index into
    ``split.flat_captions()`` and its minimal edit."""
    negs = split.extras.get("negatives")
    if not negs:
        return None
    first = np.cumsum([0] + [len(c) for c in split.captions[:-1]])
    return torch.from_numpy(first + [n["positive"] for n in negs]), [n["caption"] for n in negs]


def _winoground_pairs(groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and caption indices of the 4 pairs of each group (images and captions
    flattened group by group), in ``(caption, image)`` order."""
    first = 2 * torch.arange(groups).repeat_interleave(4)
    images = first + torch.tensor([0, 1, 0, 1]).repeat(groups)
    captions = first + torch.tensor([0, 0, 1, 1]).repeat(groups)
    return images, captions


def captioning_metrics(
    captions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of captions against their references."""
    from alignfuse.metrics.captioning import bleu, cider, rouge_l

    out = dict(bleu(captions, references))
    out["rouge_l"] = rouge_l(captions, references)
    out["cider"] = cider(captions, references)
    return out


@torch.inference_mode()
def retrieval_captions(
    model: Any, images: np.ndarray, pool: Sequence[str], batch_size: int = 256
) -> list[str]:
    """Nearest-neighbour captioning with a dual encoder: each image's most similar caption
    of ``pool`` (the distinct training captions, say)."""
    if not pool:
        raise ValueError("pool must hold at least one caption")
    pool = list(dict.fromkeys(pool))  # distinct, in first-seen order
    img = embed_images(model, images, batch_size)
    txt = embed_texts(model, pool, batch_size)
    best = torch.cat([(img[i : i + 1024] @ txt.T).argmax(1) for i in range(0, len(img), 1024)])
    return [pool[j] for j in best.tolist()]


def _evaluate_generative(model: Any, split: ImageTextSplit, batch_size: int) -> dict[str, Any]:
    """Captioning metrics of greedy captions against the split's references; hard negatives
    by caption likelihood. A captioner has no score matrix, so no retrieval."""
    captions = generate_captions(model, split.images, batch_size)
    out: dict[str, Any] = captioning_metrics(captions, split.captions)
    negs = _hard_negatives(split)
    if negs is not None:
        texts = split.flat_captions()[0]
        pos_texts = [texts[j] for j in negs[0].tolist()]
        pos = caption_likelihoods(model, split.images, pos_texts, batch_size)
        neg = caption_likelihoods(model, split.images, negs[1], batch_size)
        out.update(hard_negative_accuracy(pos.cpu().numpy(), neg.cpu().numpy()))
    out["_captions"] = captions
    return out


def evaluate_split(model: Any, split: ImageTextSplit, batch_size: int = 256) -> dict[str, Any]:
    """Retrieval metrics (R@K, ranks, mAP), hard-negative accuracy where the split has
    negatives, and for dual encoders the embedding diagnostics (modality gap, alignment,
    uniformity); a pairwise model has no embedding to measure them on. A two-stage model
    gets the metrics of its re-ranked retrieval and of its first stage (``itc_*``); a
    generative model gets captioning metrics (BLEU, ROUGE-L, CIDEr-D) instead of retrieval."""
    was_training = model.training
    model.eval()
    pairwise = isinstance(model, PairwiseScorer)
    two_stage = isinstance(model, TwoStageRanker)
    try:
        if isinstance(model, CaptionGenerator):
            return _evaluate_generative(model, split, batch_size)
        texts, owner = split.flat_captions()
        own = torch.from_numpy(owner)
        out: dict[str, Any] = {}
        if pairwise:  # no per-item embedding: the model scores every pair
            sims = pair_scores(model, split.images, texts, batch_size)
        elif two_stage:  # embeddings rank, the fusion re-scores the top k
            img, regions = two_stage_images(model, split.images, batch_size)
            txt, words, wmask = two_stage_texts(model, texts, batch_size)
            first = first_stage(model, img, txt)
            first_metrics = {**retrieval_metrics(first, own), **retrieval_map(first, own)}
            out.update({f"itc_{k}": v for k, v in first_metrics.items()})
            i2t, t2i = rerank(model, first, regions, words, wmask, model.rerank_k, batch_size)
            out.update(two_stage_metrics(i2t, t2i, own))
            out["rerank_k"] = float(model.rerank_k)  # for the report's two-stage table
            sims = i2t  # what a report shows: each image's ranked captions
        else:
            img = embed_images(model, split.images, batch_size)
            txt = embed_texts(model, texts, batch_size)
            sims = img @ txt.T
        if not two_stage:
            out.update(retrieval_metrics(sims, own))
            out.update(retrieval_map(sims, own))
        if not pairwise and img.ndim == 2:  # one embedding per image (not BLIP-2's queries)
            out.update(embedding_diagnostics(img, txt, own))
        negs = _hard_negatives(split)
        if negs is not None:
            pos_idx, neg_texts = negs
            rows = torch.arange(len(split))
            if pairwise:
                pos = sims[rows, pos_idx]
                neg = pair_scores(model, split.images, neg_texts, batch_size).diagonal()
            elif two_stage:
                pos = (
                    match_pairs(model, regions, words, wmask, rows, pos_idx) + first[rows, pos_idx]
                )
                n_emb, n_words, n_mask = two_stage_texts(model, neg_texts, batch_size)
                neg = match_pairs(model, regions, n_words, n_mask, rows, rows) + first_stage(
                    model, img, n_emb, paired=True
                )
            else:
                pos = sims[rows, pos_idx]
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
        if isinstance(model, PairwiseScorer):
            full = pair_scores(model, images, captions, batch_size)  # (2g images, 2g captions)
            blocks = full.reshape(g, 2, g, 2).diagonal(dim1=0, dim2=2)  # (2 i, 2 c, g)
            scores = blocks.permute(2, 1, 0)  # (g, caption, image)
        elif isinstance(model, CaptionGenerator):  # caption likelihood of each of the 4 pairs
            im, cap = _winoground_pairs(g)
            lik = caption_likelihoods(
                model, images[im.numpy()], [captions[c] for c in cap.tolist()], batch_size
            )
            scores = lik.reshape(g, 2, 2)
        elif isinstance(model, TwoStageRanker):  # the re-ranking score of each of the 4 pairs
            img, regions = two_stage_images(model, images, batch_size)
            txt, words, wmask = two_stage_texts(model, captions, batch_size)
            im, cap = _winoground_pairs(g)
            cos = first_stage(model, img[im], txt[cap], paired=True)
            scores = (match_pairs(model, regions, words, wmask, im, cap) + cos).reshape(g, 2, 2)
        else:
            img = embed_images(model, images, batch_size).reshape(g, 2, -1)
            txt = embed_texts(model, captions, batch_size).reshape(g, 2, -1)
            scores = torch.einsum("gcd,gid->gci", txt, img)
        return winoground_scores(scores.cpu().numpy())
    finally:
        model.train(was_training)


PROBE_TRAIN = 3000  # training images a linear probe is fitted on (evenly spaced)


def classification_metrics(
    model: Any, data: ImageTextData, split: ImageTextSplit, batch_size: int = 256
) -> dict[str, float]:
    """Zero-shot classification and a linear probe on the image embeddings, for data whose
    splits carry class labels (``extras["categories"]`` indexing ``data.info["classes"]``)
    and a model with one embedding per image (otherwise ``{}``).

    Zero-shot (``zs_top1``, ``zs_top5``, ``zs_mean_class``, ``zs_acc/<class>``): classes
    described by :data:`~alignfuse.metrics.zero_shot.TEMPLATES`, prompt-ensembled. Linear
    probe (``probe_acc``): a logistic regression fitted on the embeddings of up to
    :data:`PROBE_TRAIN` training images, tested on this split."""
    from alignfuse.metrics.probes import probe_accuracy
    from alignfuse.metrics.zero_shot import class_embeddings, class_prompts, zero_shot_metrics

    classes = data.info.get("classes")
    labels = split.extras.get("categories")
    if (
        not classes
        or labels is None
        or isinstance(model, (PairwiseScorer, TwoStageRanker, CaptionGenerator))
    ):
        return {}
    was_training = model.training
    model.eval()
    try:
        img = embed_images(model, split.images, batch_size)
        if img.ndim != 2:
            return {}
        prompts = class_prompts(classes)
        cls = class_embeddings(embed_texts(model, prompts, batch_size), len(classes))
        zs = zero_shot_metrics(img, cls, labels)
        out = {f"zs_{k}": v for k, v in zs.items() if k != "per_class"}
        for name, acc in zip(classes, zs["per_class"], strict=True):
            if not np.isnan(acc):
                out[f"zs_acc/{name}"] = float(acc)
        train = data.splits.get("train")
        if train is not None and "categories" in train.extras:
            pick = np.linspace(0, len(train) - 1, min(PROBE_TRAIN, len(train))).astype(int)
            y_train = np.asarray(train.extras["categories"])[pick]
            if len(np.unique(y_train)) > 1:
                z_train = embed_images(model, train.images[pick], batch_size)
                out["probe_acc"] = probe_accuracy(z_train.cpu(), y_train, img.cpu(), labels)
        return out
    finally:
        model.train(was_training)


def evaluate(
    model: Any,
    data: ImageTextData,
    splits: Sequence[str],
    batch_size: int = 256,
    retrieval_captioning: bool = False,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Every metric on every split, flat keys ``"<split>/<metric>"``; also the score
    matrices by split (for reports). With ``retrieval_captioning`` a dual encoder also
    captions each image by its most similar training caption (:func:`retrieval_captions`)
    and gets the captioning metrics."""
    metrics: dict[str, float] = {}
    sims: dict[str, torch.Tensor] = {}
    nn_captions = retrieval_captioning and not isinstance(
        model, (PairwiseScorer, TwoStageRanker, CaptionGenerator)
    )
    # test_dk is built-in data's own split: evaluated where the data has it
    unknown = [name for name in splits if name not in data.splits and name != "test_dk"]
    if unknown:
        raise ConfigError(
            f"eval.splits names {unknown}, which the data does not have (it has: "
            f"{', '.join(data.splits)})"
        )
    for name in [n for n in splits if n in data.splits]:
        res = evaluate_split(model, data[name], batch_size)
        if nn_captions:
            was_training = model.training
            model.eval()
            try:
                caps = retrieval_captions(model, data[name].images, data.train_texts, batch_size)
            finally:
                model.train(was_training)
            res.update(captioning_metrics(caps, data[name].captions))
        res.update(classification_metrics(model, data, data[name], batch_size))
        res.pop("_captions", None)
        if "_sims" in res:  # a captioner has none
            sims[name] = res.pop("_sims")
        metrics.update({f"{name}/{k}": float(v) for k, v in res.items()})
    metrics.update(
        {f"winoground/{k}": v for k, v in evaluate_winoground(model, data, batch_size).items()}
    )
    return metrics, sims
