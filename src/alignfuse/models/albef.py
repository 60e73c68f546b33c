"""ALBEF as a model (Li et al. 2021, "Align before Fuse: vision and language representation
learning with momentum distillation").

Three parts, trained together:

1. **Align**: the dual encoder's two towers and projections, trained with the configured
   contrastive loss (ITC; InfoNCE in the paper) on their pooled, L2-normalised embeddings.
2. **Fuse**: a multimodal encoder over the text's word features (plus a learned ``[CLS]``
   token) whose layers self-attend the words and cross-attend the image's region tokens
   (:class:`FusionLayer`); or, with ``fusion="merged"``, one self-attention over the words
   and region tokens together (:class:`MergedLayer`, the single-stream encoder of ViLT and
   UNITER; METER's "merged attention").
3. Two objectives on the fused states: **ITM**, a 2-way head on ``[CLS]`` trained on every
   positive pair and, per image and per caption, one in-batch negative drawn with
   probability ``softmax`` of the contrastive similarity (so hard negatives come often;
   :func:`~alignfuse.losses.matching.matching`); and **MLM**, the masked words predicted
   from the fused states of the caption with the image (15% of the words; 80% of those
   replaced by the mask token, 10% by a random word, 10% kept).

With ``fusion="merged"`` and ``wra_weight > 0``, UNITER's **word-region alignment** (Chen et
al. 2020) joins them: on the same ITM pairs, the exact optimal-transport distance (IPOT,
:func:`~alignfuse.transport.word_region_distance`) between the fused word states and the
fused region states, under the cosine cost and uniform weights over the real tokens, is
lowered for matches and raised for negatives (UNITER's signed mean; its code computes it on
the ITM forward pass, as here). With ``mrm_weight > 0``, UNITER's **masked region feature
regression** (MRFR) too: 15% of each image's region tokens have their features zeroed and
the fused states there, given the whole caption (UNITER's conditional masking: one modality
masked at a time), regress the image tower's features at those positions. ITC + ITM + MLM +
WRA + MRFR over a single stream is UNITER's pre-training recipe (its MRC variants need a
detector's class distributions, which this setting has none of) with ALBEF's contrastive
stage in front. The regression targets here are the tower's own (trained) tokens, where
UNITER's are a frozen detector's features.

Retrieval follows the paper's protocol: the contrastive similarity ranks everything, then
the top ``rerank_k`` of every query are re-scored by ``ITM logit + similarity``
(:func:`alignfuse.engine.evaluate.rerank`). Hard negatives and Winoground use that same
score on the pair.

Differences from the paper, by design of this small-data setting: the towers are the
library's small encoders trained from scratch (no BERT / ViT initialisation); the mask
token is ``<unk>`` (id 1), which no training caption contains because the vocabulary is
built from them; the image tokens get a learned position embedding in the fusion (a ViT's
tokens carry theirs). Negatives for ITM are never the pair's own image or an identical
caption (the built-in data repeats many caption strings).

**Momentum distillation** (the paper's section 3.3) is optional: with ``momentum > 0`` an
EMA copy of the whole model (``momentum_model``, updated before each training step, as the
paper's code does) supplies the contrastive keys (its features of the batch, plus
``queue_size`` earlier ones held in first-in-first-out queues, as MoCo) and soft targets:
the contrastive targets are ``(1 - alpha) * one-hot + alpha * softmax`` of the teacher's
similarities, and MLM adds ``alpha`` times the cross-entropy to the teacher's word
distributions (``distill_alpha``, 0.4 in the paper; momentum 0.995, queue 65,536 there).
The temperature is the configured contrastive loss's (``logit_scale``).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.losses.matching import matching
from alignfuse.models.dual_encoder import DualEncoder, build_towers
from alignfuse.outputs import LossOutput
from alignfuse.registry import MODELS, check_arguments
from alignfuse.transport.ipot import word_region_alignment_loss, word_region_distance

MASK_ID = 1  # ``<unk>``: absent from training captions, so it marks the masked words


def mask_words(
    ids: torch.Tensor,
    lengths: torch.Tensor,
    vocab_size: int,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of word ids ``(B, L)``: each word (position below its caption's
    length) is chosen with ``probability``, and at least one per caption; a chosen word
    becomes :data:`MASK_ID` with probability 0.8, a uniformly random word (ids 2 and up)
    with 0.1, and stays with 0.1. Returns ``(masked_ids, chosen)`` (``chosen`` bool)."""
    if not 0.0 < probability <= 1.0:
        raise ValueError(f"probability must be in (0, 1], got {probability}")
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (pad, unk and a word), got {vocab_size}")
    if ids.ndim != 2 or ids.is_floating_point():
        raise ValueError(f"ids must be (B, L) integer word ids, got {tuple(ids.shape)} {ids.dtype}")
    b, length = ids.shape
    if lengths.shape != (b,):
        raise ValueError(
            f"lengths must have shape ({b},) (one per caption), got {tuple(lengths.shape)}"
        )
    valid = torch.arange(length, device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
    dev = ids.device
    chosen = choose_positions(valid, probability, generator)
    how = torch.rand(b, length, generator=generator, device=dev)
    random_ids = torch.randint(2, vocab_size, (b, length), generator=generator, device=dev)
    out = ids.clone()
    out = torch.where(chosen & (how < 0.8), torch.full_like(ids, MASK_ID), out)
    out = torch.where(chosen & (how >= 0.8) & (how < 0.9), random_ids, out)
    return out, chosen


def choose_positions(
    valid: torch.Tensor, probability: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Each ``True`` position of ``valid`` ``(B, L)`` chosen with ``probability``, and at
    least one per row (its valid position of smallest draw; the draws are uniform)."""
    u = torch.rand(valid.shape, generator=generator, device=valid.device)
    chosen = (u < probability) & valid
    none = ~chosen.any(1)
    first = u.masked_fill(~valid, 2.0).argmin(1)
    chosen[none, first[none]] = True
    return chosen


def itm_scale(itc_loss: nn.Module, itm_temperature: float | None) -> float:
    """The inverse temperature of the softmax that draws ITM negatives: ``1 /
    itm_temperature`` when given, else the contrastive loss's (``logit_scale``; 1 / 0.07
    for a loss without one)."""
    if itm_temperature is not None:
        return 1 / itm_temperature
    log_scale = getattr(itc_loss, "logit_scale", None)
    return float(log_scale.detach().exp()) if isinstance(log_scale, torch.Tensor) else 1 / 0.07


def hard_negative_itm(
    head: Any, sims: torch.Tensor, ids: torch.Tensor, image_ids: torch.Tensor | None
) -> tuple[torch.Tensor, float, torch.Tensor]:
    """ITM on every positive pair of a batch and one negative per image and per caption,
    drawn by ``softmax(sims)`` (:func:`~alignfuse.losses.matching.matching`), never the
    pair's own image (equal ``image_ids``) or an identical caption (equal ``ids`` rows);
    ``head(image_rows, text_rows)`` gives ``(M, 2)`` logits. Returns the loss, the head's
    accuracy and the targets of the pairs ``(M,)`` (1 = a match), in the head's row order."""
    positives = (ids[:, None, :] == ids[None, :, :]).all(-1)  # identical captions
    if image_ids is not None:
        image_ids = image_ids.to(ids.device)
        positives |= image_ids[:, None] == image_ids[None, :]
    rows = torch.arange(len(ids), device=ids.device)
    itm, logits, targets = matching(head, rows, rows, sims, positive_mask=positives)
    return itm, float((logits.argmax(1) == targets).float().mean()), targets


class FusionLayer(nn.Module):
    """One layer of the multimodal encoder, BERT-style (post-norm): self attention over the
    words, cross attention from the words to the region tokens, a feed-forward block.

    The cross attention's keys and values are computed once per image: ``regions`` holds
    one row per distinct image and ``region_index`` (optional) says which image each word
    row attends to, so the ``3N`` ITM pairs and ``N`` MLM captions of a batch of ``N``
    pairs project the ``N`` images' tokens once, not ``4N`` times.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.self_att = nn.MultiheadAttention(width, heads, batch_first=True)
        self.query = nn.Linear(width, width)
        self.key_value = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)
        self.ffn = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.reshape(b, n, self.heads, w // self.heads).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        regions: torch.Tensor,
        region_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        att = self.self_att(x, x, x, key_padding_mask=~x_mask, need_weights=False)[0]
        x = self.norms[0](x + att)
        key, value = self.key_value(regions).chunk(2, dim=-1)
        if region_index is not None:  # index_select: a fixed-order backward (see matching)
            key, value = key.index_select(0, region_index), value.index_select(0, region_index)
        cross = F.scaled_dot_product_attention(
            self._split(self.query(x)), self._split(key), self._split(value)
        )
        x = self.norms[1](x + self.out(cross.transpose(1, 2).reshape(x.shape)))
        out: torch.Tensor = self.norms[2](x + self.ffn(x))
        return out


class MergedLayer(nn.Module):
    """One layer of a merged-attention multimodal encoder (ViLT, UNITER; METER's "merged
    attention"): a single self-attention over the concatenated word and region tokens, then a
    feed-forward block; post-norm, like :class:`FusionLayer`. Every token attends every
    other, so the regions are updated too (in :class:`FusionLayer` they are keys only)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ffn = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(2))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        att = self.att(x, x, x, key_padding_mask=~x_mask, need_weights=False)[0]
        x = self.norms[0](x + att)
        out: torch.Tensor = self.norms[1](x + self.ffn(x))
        return out


FUSIONS = ("cross", "merged")


class ALBEF(DualEncoder):
    """Dual encoder + multimodal encoder with ITM and MLM heads (Li et al. 2021).

    Args:
        image_encoder: module with ``encode(images) -> ((B, D), (B, R, D))``.
        text_encoder: vocabulary encoder with ``prepare``, ``tokens`` and ``encode``.
        embed_dim: width of the contrastive space.
        width: width of the multimodal encoder.
        depth: its number of layers.
        heads: attention heads per layer.
        mlm_probability: fraction of the words masked for MLM.
        itm_weight, mlm_weight: weights of the ITM and MLM losses (the contrastive one has
            weight 1); ``mlm_weight=0`` drops MLM and its head.
        rerank_k: candidates per query re-scored by ITM at evaluation.
        max_regions: most image tokens the fusion's position table takes.
        momentum: EMA factor of the momentum teacher (0 = no teacher, no distillation).
        queue_size: teacher features kept as extra contrastive keys (needs ``momentum``).
        distill_alpha: weight of the teacher's soft targets (ITC and MLM).
        itm_temperature: temperature of the softmax over cosine similarities that draws the
            ITM negatives; ``None`` = the contrastive loss's (the paper's). Larger values
            draw easier negatives (uniform in the limit).
        fusion: ``"cross"`` (the paper's: words self-attend, then cross-attend the regions,
            :class:`FusionLayer`) or ``"merged"`` (one self-attention over words and regions
            together, with a learned modality-type embedding each, :class:`MergedLayer`; the
            single-stream encoder of ViLT / UNITER, compared with co-attention by METER).
        wra_weight: weight of UNITER's word-region alignment (WRA) loss, 0 = off; needs
            ``fusion="merged"``. On every ITM pair, the exact OT distance (IPOT) between the
            fused word states and the fused region states under the cosine cost;
            matches are pulled together, negatives pushed apart
            (:func:`~alignfuse.transport.word_region_alignment_loss`).
        mrm_weight: weight of UNITER's masked region feature regression (MRFR), 0 = off;
            needs ``fusion="merged"``. ``mrm_probability`` of each image's region tokens (at
            least one) have their tower features zeroed; the fused states at those
            positions, given the whole caption, regress the tower's features there (mean
            squared error; the targets carry no gradient).
        mrm_probability: fraction of the region tokens masked for MRFR.

    Example:
        >>> tok = Tokenizer.build(["a red circle", "a blue square"])
        >>> model = build_albef(tok, embed_dim=16, width=16, heads=2,
        ...                     image_args={"width": 4, "out_dim": 16})
        >>> from alignfuse.losses import InfoNCELoss
        >>> batch = {"images": torch.rand(2, 3, 64, 64),
        ...          "text": model.prepare_text(["a red circle", "a blue square"])}
        >>> out = model.training_loss(batch, InfoNCELoss())
        >>> sorted(out.logs)
        ['itc', 'itm', 'itm_acc', 'mlm', 'mlm_acc', 'temperature']
    """

    image_queue: torch.Tensor
    text_queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        embed_dim: int = 256,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlm_probability: float = 0.15,
        itm_weight: float = 1.0,
        mlm_weight: float = 1.0,
        rerank_k: int = 16,
        max_regions: int = 256,
        momentum: float = 0.0,
        queue_size: int = 0,
        distill_alpha: float = 0.4,
        itm_temperature: float | None = None,
        fusion: str = "cross",
        wra_weight: float = 0.0,
        mrm_weight: float = 0.0,
        mrm_probability: float = 0.15,
    ) -> None:
        super().__init__(image_encoder, text_encoder, embed_dim)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.fusion = fusion
        if not wra_weight >= 0 or (wra_weight and fusion != "merged"):
            raise ValueError(
                f"wra_weight must be >= 0 and needs fusion='merged' (WRA aligns the fused word "
                f"and region states; the cross-attention encoder does not update the regions), "
                f"got wra_weight={wra_weight}, fusion={fusion!r}"
            )
        self.wra_weight = float(wra_weight)
        if not mrm_weight >= 0 or (mrm_weight and fusion != "merged"):
            raise ValueError(
                f"mrm_weight must be >= 0 and needs fusion='merged' (MRFR predicts from the "
                f"fused region states), got mrm_weight={mrm_weight}, fusion={fusion!r}"
            )
        if not 0.0 < mrm_probability <= 1.0:
            raise ValueError(f"mrm_probability must be in (0, 1], got {mrm_probability}")
        self.mrm_weight, self.mrm_probability = float(mrm_weight), mrm_probability
        if not callable(getattr(image_encoder, "encode", None)):
            raise ValueError(
                f"ALBEF needs an image encoder with region tokens (encode()); "
                f"{type(image_encoder).__name__} has none"
            )
        tok = getattr(text_encoder, "tokenizer", None)
        if not isinstance(tok, Tokenizer) or not callable(getattr(text_encoder, "encode", None)):
            raise ValueError(
                "ALBEF needs a vocabulary text encoder with word features ('bigru' or "
                f"'transformer'); got {type(text_encoder).__name__}"
            )
        for name, value in (("width", width), ("depth", depth), ("heads", heads)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        if not 0.0 < mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in (0, 1], got {mlm_probability}")
        if itm_weight < 0 or mlm_weight < 0:
            raise ValueError(
                f"itm_weight and mlm_weight must be >= 0, got {itm_weight}, {mlm_weight}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1) (0 = no momentum model), got {momentum}")
        if queue_size < 0 or (queue_size and not momentum):
            raise ValueError(
                f"queue_size must be >= 0 and needs a momentum model (momentum > 0), got "
                f"queue_size={queue_size}, momentum={momentum}"
            )
        if itm_temperature is not None and not itm_temperature > 0:
            raise ValueError(f"itm_temperature must be > 0 (or None), got {itm_temperature}")
        self.itm_temperature = itm_temperature
        if not 0.0 <= distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha must be in [0, 1], got {distill_alpha}")
        if rerank_k < 1 or max_regions < 1:
            raise ValueError(
                f"rerank_k and max_regions must be >= 1, got {rerank_k}, {max_regions}"
            )
        self.vocab_size = len(tok)
        self.width, self.rerank_k = width, rerank_k
        self.mlm_probability, self.itm_weight, self.mlm_weight = (
            mlm_probability,
            itm_weight,
            mlm_weight,
        )
        image_dim = int(image_encoder.out_dim)  # type: ignore[arg-type]
        self.region_fuse = nn.Linear(image_dim, width)
        self.word_fuse = nn.Linear(int(text_encoder.out_dim), width)  # type: ignore[arg-type]
        self.region_pos = nn.Parameter(torch.randn(1, max_regions, width) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        layer = FusionLayer if fusion == "cross" else MergedLayer
        self.layers = nn.ModuleList(layer(width, heads) for _ in range(depth))
        # merged attention: which tokens are words (row 0) and which are regions (row 1)
        self.type_emb = nn.Parameter(torch.randn(2, width) * 0.02) if fusion == "merged" else None
        self.itm_head = nn.Linear(width, 2)
        self.mlm_head = (
            nn.Sequential(
                nn.Linear(width, width),
                nn.GELU(),
                nn.LayerNorm(width),
                nn.Linear(width, self.vocab_size),
            )
            if mlm_weight > 0
            else None
        )
        self.mrm_head = (
            nn.Sequential(
                nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, image_dim)
            )
            if mrm_weight > 0
            else None
        )
        self.momentum, self.queue_size, self.distill_alpha = momentum, queue_size, distill_alpha
        self.momentum_model: ALBEF | None = None
        if momentum:
            # the EMA teacher: a frozen copy of every part (made before this attribute is
            # set, so it has no teacher of its own)
            teacher = copy.deepcopy(self)
            teacher.requires_grad_(False)
            self.momentum_model = teacher
            self.register_buffer(
                "image_queue", F.normalize(torch.randn(embed_dim, queue_size), dim=0)
            )
            self.register_buffer(
                "text_queue", F.normalize(torch.randn(embed_dim, queue_size), dim=0)
            )
            self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------ features

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit contrastive embeddings ``(B, embed_dim)`` and fusion region tokens
        ``(B, R, width)`` of images, from one pass of the tower."""
        img, tok = self._tower(images)
        return img, self.region_tokens(tok)

    def _tower(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit contrastive embeddings and the tower's own tokens ``(B, R, out_dim)``."""
        glob, tok = self.image_encoder.encode(images)  # type: ignore[operator]
        return F.normalize(self.image_proj(glob), dim=-1), tok

    def region_tokens(self, tok: torch.Tensor) -> torch.Tensor:
        """The fusion's region tokens ``(B, R, width)`` from the tower's tokens."""
        r = tok.shape[1]
        if r > self.region_pos.shape[1]:
            raise ValueError(
                f"the image encoder gives {r} tokens; max_regions is {self.region_pos.shape[1]}"
            )
        out: torch.Tensor = self.region_fuse(tok) + self.region_pos[:, :r]
        return out

    def predict_regions(
        self, tok: torch.Tensor, words: torch.Tensor, word_mask: torch.Tensor, chosen: torch.Tensor
    ) -> torch.Tensor:
        """MRFR's predictions ``(n_chosen, out_dim)`` of the tower tokens ``tok`` at the
        ``chosen`` ``(B, R)`` positions, whose features are zeroed before the fusion (the
        region's position embedding stays), from the other regions and the words."""
        if self.mrm_head is None:
            raise ValueError("predict_regions needs a model built with mrm_weight > 0")
        if chosen.shape != tok.shape[:2] or chosen.dtype != torch.bool:
            raise ValueError(
                f"chosen must be a bool mask of shape {tuple(tok.shape[:2])}, got "
                f"{tuple(chosen.shape)} {chosen.dtype}"
            )
        masked = self.region_tokens(tok.masked_fill(chosen[..., None], 0.0))
        states = self.fuse(masked, words, word_mask, all_states=True)[:, 1 + words.shape[1] :]
        out: torch.Tensor = self.mrm_head(states[chosen])
        return out

    def text_features(
        self, prepared: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit contrastive embeddings ``(B, embed_dim)``, fusion word tokens
        ``(B, L, width)`` and their mask ``(B, L)``."""
        ids, lengths = prepared["ids"], prepared["lengths"]
        glob, tok = self.text_encoder.encode(ids, lengths)  # type: ignore[operator]
        return (
            F.normalize(self.text_proj(glob), dim=-1),
            self.word_fuse(tok),
            self._word_mask(ids, lengths),
        )

    @staticmethod
    def _word_mask(ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return (
            torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        )

    def fuse(
        self,
        regions: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        region_index: torch.Tensor | None = None,
        all_states: bool = False,
    ) -> torch.Tensor:
        """The multimodal encoder's ``[CLS]`` and word states ``(B, 1 + L, width)``, ``[CLS]``
        first. Row ``i`` of ``words`` is fused with ``regions[i]``, or with
        ``regions[region_index[i]]`` when given. ``all_states`` (merged fusion only): the
        region states too, ``(B, 1 + L + R, width)``."""
        if all_states and self.type_emb is None:
            raise ValueError("all_states needs fusion='merged' (cross attention keeps the regions)")
        rows = words.shape[0] if region_index is None else region_index.shape[0]
        if (
            word_mask.shape != words.shape[:2]
            or rows != words.shape[0]
            or (region_index is None and regions.shape[0] != words.shape[0])
        ):
            raise ValueError(
                f"regions {tuple(regions.shape)}, words {tuple(words.shape)}, word_mask "
                f"{tuple(word_mask.shape)} and region_index "
                f"{None if region_index is None else tuple(region_index.shape)} are not paired rows"
            )
        if (
            region_index is not None
            and len(region_index)
            and (int(region_index.min()) < 0 or int(region_index.max()) >= regions.shape[0])
        ):
            raise ValueError(f"region_index must be in [0, {regions.shape[0]}) (one per image)")
        cls = self.cls.expand(len(words), -1, -1)
        x_mask = F.pad(word_mask, (1, 0), value=True)
        if self.type_emb is not None:  # merged: one sequence [CLS, words, regions]
            if region_index is not None:
                regions = regions.index_select(0, region_index)
            x = torch.cat([cls, words + self.type_emb[0], regions + self.type_emb[1]], 1)
            x_mask = F.pad(x_mask, (0, regions.shape[1]), value=True)
            for layer in self.layers:
                x = layer(x, x_mask)
            return x if all_states else x[:, : 1 + words.shape[1]]
        x = torch.cat([cls, words], 1)
        for layer in self.layers:
            x = layer(x, x_mask, regions, region_index)
        return x

    def match_logits(
        self,
        regions: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        region_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM logits ``(B, 2)`` of paired rows (index 1 = match); see :meth:`fuse`."""
        out: torch.Tensor = self.itm_head(self.fuse(regions, words, word_mask, region_index)[:, 0])
        return out

    def match_scores(
        self,
        regions: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
        region_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The paper's ITM score of paired rows: the match logit, ``(B,)``."""
        return self.match_logits(regions, words, word_mask, region_index)[:, 1]

    # ------------------------------------------------------------------ training

    def training_loss(self, batch: Mapping[str, Any], itc_loss: nn.Module) -> LossOutput:
        """ITC (``itc_loss`` on the two embeddings) + ITM with hard negatives (+ WRA on the
        same pairs) + MLM (+ MRFR) on a batch ``{"images", "text"[, "image_ids"]}``; ``logs``
        has each part."""
        text = batch["text"]
        img, image_tok = self._tower(batch["images"])
        regions = self.region_tokens(image_tok)
        txt, words, wmask = self.text_features(text)
        teacher = self.momentum_model
        if teacher is not None:
            self._momentum_update()
            with torch.no_grad():
                img_m, regions_m = teacher.image_features(batch["images"])
                txt_m, _, _ = teacher.text_features(text)
            itc = self._distilled_itc(img, txt, img_m, txt_m, itc_loss)
        else:
            itc = itc_loss(img, txt)
        total = itc.loss
        logs = {"itc": float(itc.loss.detach())}
        if self.itm_weight > 0 or self.wra_weight > 0:
            sims = (img @ txt.T).detach() * itm_scale(itc_loss, self.itm_temperature)

            distances: list[torch.Tensor] = []

            def head(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
                # the pairs are indices: each image's keys and values are projected once;
                # index_select: a fixed-order backward over repeated rows (see matching)
                wra, length = bool(self.wra_weight), words.shape[1]
                states = self.fuse(
                    regions, words.index_select(0, text), wmask[text], image, all_states=wra
                )
                if wra:  # WRA on the same forward pass, as UNITER's code
                    fused_words, fused_regions = states[:, 1 : 1 + length], states[:, 1 + length :]
                    distances.append(word_region_distance(fused_words, fused_regions, wmask[text]))
                out: torch.Tensor = self.itm_head(states[:, 0])
                return out

            itm, acc, targets = hard_negative_itm(head, sims, text["ids"], batch.get("image_ids"))
            total = total + self.itm_weight * itm
            logs["itm"], logs["itm_acc"] = float(itm.detach()), acc
            if distances:
                wra = word_region_alignment_loss(distances[0], targets == 1)
                total = total + self.wra_weight * wra
                logs["wra"] = float(wra.detach())
        if self.mlm_head is not None:
            ids, lengths = text["ids"], text["lengths"]
            masked, chosen = mask_words(ids, lengths, self.vocab_size, self.mlm_probability)
            tok = self.text_encoder.tokens(masked, lengths)  # type: ignore[operator]
            states = self.fuse(regions, self.word_fuse(tok), wmask)[:, 1:]
            pred = self.mlm_head(states[chosen])
            mlm = F.cross_entropy(pred, ids[chosen])
            if teacher is not None and teacher.mlm_head is not None and self.distill_alpha:
                with torch.no_grad():  # the teacher's word distributions, same masked input
                    tok_m = teacher.text_encoder.tokens(masked, lengths)  # type: ignore[operator]
                    states_m = teacher.fuse(regions_m, teacher.word_fuse(tok_m), wmask)[:, 1:]
                    soft = teacher.mlm_head(states_m[chosen]).softmax(-1)
                distill = -(soft * pred.log_softmax(-1)).sum(-1).mean()
                mlm = (1 - self.distill_alpha) * mlm + self.distill_alpha * distill
            total = total + self.mlm_weight * mlm
            logs["mlm"] = float(mlm.detach())
            logs["mlm_acc"] = float((pred.argmax(1) == ids[chosen]).float().mean())
        if self.mrm_head is not None:
            valid = torch.ones(image_tok.shape[:2], dtype=torch.bool, device=image_tok.device)
            masked_regions = choose_positions(valid, self.mrm_probability)
            pred = self.predict_regions(image_tok, words, wmask, masked_regions)
            mrm = F.mse_loss(pred, image_tok.detach()[masked_regions])
            total = total + self.mrm_weight * mrm
            logs["mrm"] = float(mrm.detach())
        return LossOutput(total, {**itc.logs, **logs})

    # ------------------------------------------------------------------ momentum distillation

    @torch.no_grad()
    def _momentum_update(self) -> None:
        """``teacher <- momentum * teacher + (1 - momentum) * model``, every parameter."""
        assert self.momentum_model is not None
        own = {n: p for n, p in self.named_parameters() if not n.startswith("momentum_model.")}
        for name, p in self.momentum_model.named_parameters():
            p.mul_(self.momentum).add_(own[name].detach(), alpha=1 - self.momentum)

    def _distilled_itc(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        img_m: torch.Tensor,
        txt_m: torch.Tensor,
        itc_loss: nn.Module,
    ) -> LossOutput:
        """ALBEF's contrastive loss with a momentum model: each image against the teacher's
        text features of the batch and the queue (and each caption likewise), with targets
        ``(1 - alpha) * one-hot + alpha * softmax`` of the teacher's own similarities; the
        temperature is ``itc_loss``'s. The teacher's features then enter the queues."""
        log_scale = getattr(itc_loss, "logit_scale", None)
        if not isinstance(log_scale, torch.Tensor):
            raise ValueError(
                "momentum distillation takes its temperature from the contrastive loss: use "
                f"a loss with logit_scale (info_nce), not {type(itc_loss).__name__}"
            )
        scale = log_scale.clamp(max=float(getattr(itc_loss, "max_log_scale", math.inf))).exp()
        n = img.shape[0]
        img_all = torch.cat([img_m, self.image_queue.T])
        txt_all = torch.cat([txt_m, self.text_queue.T])
        with torch.no_grad():
            hard = torch.zeros(n, len(txt_all), device=img.device)
            hard[:, :n] = torch.eye(n, device=img.device)
            a = self.distill_alpha
            t_i2t = a * (img_m @ txt_all.T * scale).softmax(1) + (1 - a) * hard
            t_t2i = a * (txt_m @ img_all.T * scale).softmax(1) + (1 - a) * hard
        i2t = -(t_i2t * (img @ txt_all.T * scale).log_softmax(1)).sum(1).mean()
        t2i = -(t_t2i * (txt @ img_all.T * scale).log_softmax(1)).sum(1).mean()
        self._enqueue(img_m, txt_m)
        return LossOutput((i2t + t2i) / 2, {"temperature": float(1 / scale.detach())})

    @torch.no_grad()
    def _enqueue(self, img_m: torch.Tensor, txt_m: torch.Tensor) -> None:
        """Write the teacher's features over the oldest queue columns (first in, first out)."""
        if not self.queue_size:
            return
        ptr = int(self.queue_ptr)
        n = min(img_m.shape[0], self.queue_size)
        cols = (ptr + torch.arange(n, device=img_m.device)) % self.queue_size
        self.image_queue[:, cols] = img_m[-n:].T
        self.text_queue[:, cols] = txt_m[-n:].T
        self.queue_ptr.fill_((ptr + n) % self.queue_size)


@MODELS.register("albef")
def build_albef(
    tokenizer: Tokenizer | None = None,
    embed_dim: int = 256,
    image_encoder: str = "cnn",
    text_encoder: str = "bigru",
    image_args: dict[str, Any] | None = None,
    text_args: dict[str, Any] | None = None,
    **fusion_args: Any,
) -> ALBEF:
    """ALBEF (Li et al. 2021) from registered encoders; ``fusion_args`` are the keyword
    arguments of :class:`ALBEF` after ``embed_dim`` (``width``, ``depth``, ``heads``,
    ``mlm_probability``, ``itm_weight``, ``mlm_weight``, ``rerank_k``, ``max_regions``,
    ``momentum``, ``queue_size``, ``distill_alpha``, ``itm_temperature``, ``fusion``,
    ``wra_weight``, ``mrm_weight``, ``mrm_probability``)."""
    params = list(inspect.signature(ALBEF.__init__).parameters)
    check_arguments("model", "albef", fusion_args, params[params.index("embed_dim") + 1 :])
    if text_encoder == "minilm":
        raise ValueError(
            "ALBEF needs word features and a vocabulary: text_encoder 'bigru' or 'transformer'"
        )
    img, txt = build_towers(tokenizer, image_encoder, text_encoder, image_args, text_args)
    return ALBEF(img, txt, embed_dim, **fusion_args)
