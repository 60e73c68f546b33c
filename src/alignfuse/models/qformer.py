"""BLIP-2's Q-Former as a model (Li et al. 2023, "BLIP-2: bootstrapping language-image
pre-training with frozen image encoders and large language models"), its first stage:
vision-language representation learning.

A set of learned **queries** and the caption's tokens pass through one stack of layers
whose self-attention they share; only the queries cross-attend the image encoder's tokens,
and each side has its own feed-forward block. Three objectives, one attention mask each
(the paper's figure 2):

- **ITC** (unimodal mask: queries and text do not see each other): every query gives an
  embedding, the text its ``[CLS]`` output; an image-caption similarity is the highest of
  its queries' cosines with the caption (:meth:`QFormer.similarity`), trained with the
  configured contrastive loss on that ``(B, B)`` matrix (``from_similarity``).
- **ITM** (bidirectional mask: queries and text see each other): a 2-way head on every
  query output, averaged over the queries; one in-batch negative per image and per
  caption, drawn by the ITC similarity as in ALBEF
  (:func:`~alignfuse.models.albef.hard_negative_itm`).
- **ITG** (multimodal causal mask: the queries see only each other, each text token sees
  the queries and the tokens before it): the caption generated after a ``[DEC]`` token,
  so the queries must carry what the text needs of the image.

Retrieval is two-stage, as the paper's: the ITC similarity ranks everything, then each
query's top ``rerank_k`` are re-scored by ``ITM logit + similarity``
(:func:`alignfuse.engine.evaluate.rerank`).

Differences from the paper, by design of this small-data setting: the image encoder is the
library's small CNN trained together with the Q-Former (BLIP-2 freezes a pretrained ViT;
``freeze_image=True`` freezes whatever encoder is given), and the Q-Former's text side is
trained from scratch over the training vocabulary (BLIP-2 initialises it from BERT); the
image tokens get a learned position embedding; the second stage (the frozen LLM) is not
part of this model (see the LLaVA-style ``prefix_lm`` for a captioner).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.layers import QFormerLayer
from alignfuse.models.albef import hard_negative_itm, itm_scale
from alignfuse.models.prefix_lm import next_word_loss, next_word_targets
from alignfuse.outputs import LossOutput
from alignfuse.registry import ENCODERS, MODELS, check_arguments


class QFormer(nn.Module):
    """BLIP-2's first stage: learned queries bridge an image encoder and a text
    transformer that share their self-attention; ITC, ITM and ITG (see the module doc).

    Args:
        image_encoder: module with ``tokens(images) -> (B, R, out_dim)``.
        tokenizer: the training vocabulary; the model adds ``[CLS]`` (``len(tokenizer)``),
            ``[DEC]`` (``+ 1``) and an end token (``+ 2``).
        embed_dim: width of the contrastive space.
        width, depth, heads: the Q-Former's width, layers and attention heads.
        n_queries: learned query tokens (32 in the paper).
        max_len: most words of a caption.
        max_regions: most image tokens the position table takes.
        itm_weight, itg_weight: weights of the ITM and ITG losses (ITC has weight 1);
            0 drops the objective.
        rerank_k: candidates per query re-scored by ITM at evaluation.
        itm_temperature: temperature of the softmax that draws the ITM negatives;
            ``None`` = the contrastive loss's.
        freeze_image: keep the image encoder's weights fixed (BLIP-2's frozen encoder).

    Example:
        >>> from alignfuse.losses import InfoNCELoss
        >>> tok = Tokenizer.build(["a red circle", "a blue square"])
        >>> model = build_qformer(tok, embed_dim=16, width=16, heads=2, n_queries=4,
        ...                       image_args={"width": 4, "out_dim": 16})
        >>> batch = {"images": torch.rand(2, 3, 64, 64),
        ...          "text": model.prepare_text(["a red circle", "a blue square"])}
        >>> sorted(model.training_loss(batch, InfoNCELoss()).logs)
        ['itc', 'itg', 'itg_acc', 'itm', 'itm_acc', 'temperature']
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        tokenizer: Tokenizer,
        embed_dim: int = 256,
        width: int = 128,
        depth: int = 2,
        heads: int = 4,
        n_queries: int = 16,
        max_len: int = 32,
        max_regions: int = 256,
        itm_weight: float = 1.0,
        itg_weight: float = 1.0,
        rerank_k: int = 16,
        itm_temperature: float | None = None,
        freeze_image: bool = False,
    ) -> None:
        super().__init__()
        if not callable(getattr(image_encoder, "tokens", None)):
            raise ValueError(
                "QFormer needs an image encoder with tokens(); "
                f"{type(image_encoder).__name__} has none"
            )
        for name, value in (
            ("embed_dim", embed_dim),
            ("width", width),
            ("depth", depth),
            ("heads", heads),
            ("n_queries", n_queries),
            ("max_len", max_len),
            ("max_regions", max_regions),
            ("rerank_k", rerank_k),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if width % heads:
            raise ValueError(f"width ({width}) must be a multiple of heads ({heads})")
        if itm_weight < 0 or itg_weight < 0:
            raise ValueError(
                f"itm_weight and itg_weight must be >= 0, got {itm_weight}, {itg_weight}"
            )
        if itm_temperature is not None and not itm_temperature > 0:
            raise ValueError(f"itm_temperature must be > 0 (or None), got {itm_temperature}")
        self.image_encoder, self.tokenizer = image_encoder, tokenizer
        if freeze_image:
            self.image_encoder.requires_grad_(False)
        self.freeze_image = freeze_image
        self.max_len, self.rerank_k = max_len, rerank_k
        self.itm_weight, self.itg_weight, self.itm_temperature = (
            itm_weight,
            itg_weight,
            itm_temperature,
        )
        self.cls, self.dec, self.eos = len(tokenizer), len(tokenizer) + 1, len(tokenizer) + 2
        self.vocab_size = len(tokenizer) + 3
        self.queries = nn.Parameter(torch.randn(1, n_queries, width) * 0.02)
        self.image_in = nn.Linear(int(image_encoder.out_dim), width)  # type: ignore[arg-type]
        self.region_pos = nn.Parameter(torch.randn(1, max_regions, width) * 0.02)
        self.embed = nn.Embedding(self.vocab_size, width, padding_idx=0)
        self.text_pos = nn.Parameter(torch.randn(1, max_len + 1, width) * 0.02)
        self.layers = nn.ModuleList(QFormerLayer(width, heads) for _ in range(depth))
        self.norm_query, self.norm_text = nn.LayerNorm(width), nn.LayerNorm(width)
        self.image_proj = nn.Linear(width, embed_dim)
        self.text_proj = nn.Linear(width, embed_dim)
        self.itm_head = nn.Linear(width, 2)
        self.lm_head = nn.Linear(width, self.vocab_size)

    def train(self, mode: bool = True) -> QFormer:
        super().train(mode)
        if self.freeze_image:  # a frozen encoder stays in eval mode (batch-norm statistics)
            self.image_encoder.eval()
        return self

    # ------------------------------------------------------------------ encoders

    def prepare_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Word ids and lengths of captions (runs in the data loader)."""
        return self.tokenizer.batch(texts, self.max_len)

    def _run(
        self,
        queries: torch.Tensor,
        text: torch.Tensor,
        text_pad: torch.Tensor,
        image: torch.Tensor | None,
        mode: str,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The layers under the ``mode``'s mask: ``"unimodal"``, ``"bidirectional"`` or
        ``"causal"``; returns the normalised query and text outputs."""
        nq, nt = queries.shape[1], text.shape[1]
        mask = None
        if mode != "bidirectional" and nq and nt:
            mask = torch.zeros(nq + nt, nq + nt, dtype=torch.bool, device=text.device)
            mask[:nq, nq:] = True  # the queries never see the text
            if mode == "unimodal":
                mask[nq:, :nq] = True  # nor the text the queries
            else:  # causal: each text token sees the queries and the tokens before it
                mask[nq:, nq:] = torch.ones(nt, nt, dtype=torch.bool, device=text.device).triu(1)
        elif mode == "causal" and nt:
            mask = torch.ones(nt, nt, dtype=torch.bool, device=text.device).triu(1)
        for layer in self.layers:
            queries, text = layer(queries, text, text_pad, image, mask)
        return self.norm_query(queries), self.norm_text(text)

    def _no_text(self, rows: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return like.new_zeros(rows, 0, like.shape[-1]), torch.zeros(
            rows, 0, dtype=torch.bool, device=like.device
        )

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit query embeddings ``(B, n_queries, embed_dim)`` and the image tokens
        ``(B, R, width)`` the queries cross-attend."""
        tok = self.image_encoder.tokens(images)  # type: ignore[operator]
        r = tok.shape[1]
        if r > self.region_pos.shape[1]:
            raise ValueError(
                f"the image encoder gives {r} tokens; max_regions is {self.region_pos.shape[1]}"
            )
        image = self.image_in(tok) + self.region_pos[:, :r]
        queries = self.queries.expand(len(image), -1, -1)
        q, _ = self._run(queries, *self._no_text(len(image), image), image, "unimodal")
        return F.normalize(self.image_proj(q), dim=-1), image

    def _text_tokens(self, ids: torch.Tensor, first: int) -> torch.Tensor:
        """Embedded ``[first, w_1 .. w_n]`` with positions, ``(B, 1 + L, width)``."""
        if ids.shape[1] > self.max_len:
            raise ValueError(f"captions have {ids.shape[1]} words; max_len is {self.max_len}")
        ids = F.pad(ids, (1, 0), value=first)
        out: torch.Tensor = self.embed(ids) + self.text_pos[:, : ids.shape[1]]
        return out

    @staticmethod
    def _text_pad(prepared: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, 1 + L)`` True at padding (the first token is always there)."""
        ids, lengths = prepared["ids"], prepared["lengths"].to(prepared["ids"].device)
        pos = torch.arange(ids.shape[1] + 1, device=ids.device)[None, :]
        return pos > lengths[:, None]

    def text_features(
        self, prepared: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit ``[CLS]`` embeddings ``(B, embed_dim)`` of captions (the text alone), their
        input tokens ``(B, 1 + L, width)`` and mask ``(B, 1 + L)`` (True = a token), which
        :meth:`match_scores` takes."""
        tokens = self._text_tokens(prepared["ids"], self.cls)
        pad = self._text_pad(prepared)
        empty = tokens.new_zeros(len(tokens), 0, tokens.shape[-1])
        _, out = self._run(empty, tokens, pad, None, "unimodal")
        return F.normalize(self.text_proj(out[:, 0]), dim=-1), tokens, ~pad

    @staticmethod
    def similarity(img: torch.Tensor, txt: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """ITC similarity ``(N, M)`` of query embeddings ``(N, Q, D)`` and text embeddings
        ``(M, D)``: each pair's best query (BLIP-2's), ``chunk`` images at a time."""
        if img.ndim != 3 or txt.ndim != 2 or img.shape[-1] != txt.shape[-1]:
            raise ValueError(
                f"img must be (N, Q, D) and txt (M, D), got {tuple(img.shape)}, {tuple(txt.shape)}"
            )
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 (images per block), got {chunk}")
        return (
            torch.cat([(img[i : i + chunk] @ txt.T).amax(1) for i in range(0, len(img), chunk)])
            if len(img)
            else img.new_zeros(0, len(txt))
        )

    @staticmethod
    def pair_similarity(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """ITC similarity of paired rows: ``(N, Q, D)``, ``(N, D)`` -> ``(N,)``."""
        return (img @ txt[:, :, None])[..., 0].amax(1)

    def match_logits(
        self,
        image: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ITM logits ``(B, 2)`` (index 1 = match) of paired rows of image tokens (or of
        ``image[image_index]``) and caption tokens from :meth:`text_features`: the head on
        each query output, averaged."""
        if image_index is not None:
            if len(image_index) and (
                int(image_index.min()) < 0 or int(image_index.max()) >= len(image)
            ):
                raise ValueError(f"image_index must be in [0, {len(image)}) (one per image)")
            image = image.index_select(0, image_index)
        if len(image) != len(tokens) or mask.shape != tokens.shape[:2]:
            raise ValueError(
                f"image {tuple(image.shape)}, tokens {tuple(tokens.shape)} and mask "
                f"{tuple(mask.shape)} are not paired rows"
            )
        queries = self.queries.expand(len(image), -1, -1)
        q, _ = self._run(queries, tokens, ~mask, image, "bidirectional")
        out: torch.Tensor = self.itm_head(q).mean(1)
        return out

    def match_scores(
        self,
        image: torch.Tensor,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The ITM match logit ``(B,)`` of paired rows; see :meth:`match_logits`."""
        return self.match_logits(image, tokens, mask, image_index)[:, 1]

    def generation_logits(
        self, image: torch.Tensor, prepared: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ITG: next-token logits ``(B, 1 + L, vocab)`` at ``[DEC], w_1 .. w_n`` and the
        targets ``w_1 .. w_n, end`` (``IGNORE`` past each caption's end)."""
        ids, lengths = prepared["ids"], prepared["lengths"].to(prepared["ids"].device)
        if len(image) != len(ids):
            raise ValueError(f"image and prepared captions disagree: {len(image)}, {len(ids)} rows")
        tokens, pad = self._text_tokens(ids, self.dec), self._text_pad(prepared)
        queries = self.queries.expand(len(image), -1, -1)
        _, out = self._run(queries, tokens, pad, image, "causal")
        return self.lm_head(out), next_word_targets(ids, lengths, self.eos)

    # ------------------------------------------------------------------ training

    def training_loss(self, batch: Mapping[str, Any], itc_loss: nn.Module) -> LossOutput:
        """ITC (``itc_loss.from_similarity`` on the best-query similarities) + ITM with hard
        negatives + ITG on a batch ``{"images", "text"[, "image_ids"]}``."""
        if not callable(getattr(itc_loss, "from_similarity", None)):
            raise ValueError(
                "QFormer's ITC takes a similarity matrix (the best query per pair): use a "
                f"loss with from_similarity (info_nce, triplet), not {type(itc_loss).__name__}"
            )
        text = batch["text"]
        img, image = self.image_features(batch["images"])
        txt, tokens, mask = self.text_features(text)
        sims = self.similarity(img, txt)
        itc = itc_loss.from_similarity(sims)  # type: ignore[operator]
        total, logs = itc.loss, {"itc": float(itc.loss.detach())}
        if self.itm_weight > 0:
            scaled = sims.detach() * itm_scale(itc_loss, self.itm_temperature)

            def head(rows_i: torch.Tensor, rows_t: torch.Tensor) -> torch.Tensor:
                return self.match_logits(
                    image, tokens.index_select(0, rows_t), mask[rows_t], rows_i
                )

            itm, acc, _ = hard_negative_itm(head, scaled, text["ids"], batch.get("image_ids"))
            total = total + self.itm_weight * itm
            logs["itm"], logs["itm_acc"] = float(itm.detach()), acc
        if self.itg_weight > 0:
            logits, targets = self.generation_logits(image, text)
            itg, acc = next_word_loss(logits, targets)
            total = total + self.itg_weight * itg
            logs["itg"], logs["itg_acc"] = float(itg.detach()), acc
        return LossOutput(total, {**itc.logs, **logs})


@MODELS.register("qformer")
def build_qformer(
    tokenizer: Tokenizer | None = None,
    embed_dim: int = 256,
    image_encoder: str = "cnn",
    text_encoder: str = "none",
    image_args: dict[str, Any] | None = None,
    **qformer_args: Any,
) -> QFormer:
    """BLIP-2's Q-Former (first stage) from a registered image encoder; ``qformer_args``
    are the keyword arguments of :class:`QFormer` after ``embed_dim``. ``text_encoder`` is
    the config's generic key and is not used: the Q-Former's text side is its own."""
    if tokenizer is None:
        raise ValueError("qformer needs a tokenizer built from training captions")
    params = list(inspect.signature(QFormer.__init__).parameters)
    check_arguments("model", "qformer", qformer_args, params[params.index("embed_dim") + 1 :])
    img = ENCODERS.create(image_encoder, **(image_args or {}))
    return QFormer(img, tokenizer, embed_dim, **qformer_args)
