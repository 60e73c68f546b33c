"""What a model can do, as small runtime-checkable protocols.

Tasks and evaluators ask ``isinstance(model, PairwiseScorer)``, never for a class flag or a
model name, so a new model with the right methods is trained and evaluated like the
built-in ones.

| protocol | methods | built-in models |
|---|---|---|
| :class:`EmbeddingModel` | ``encode_image``, ``encode_text``, ``prepare_text`` | dual encoder, ALBEF |
| :class:`PairwiseScorer` | ``image_tokens``, ``text_tokens``, ``score`` | SCAN |
| :class:`TwoStageRanker` | ``image_features``, ``text_features``, ``match_scores`` | ALBEF, Q-Former |
| :class:`OwnSimilarity` | ``similarity``, ``pair_similarity`` | Q-Former |
| :class:`CaptionGenerator` | ``generate``, ``prefix``, ``log_likelihood`` | prefix LM |
| :class:`OwnObjective` | ``training_loss(batch, loss)`` | ALBEF, Q-Former, prefix LM |
| :class:`SimilarityLoss` | ``from_similarity(sims)`` (a loss) | InfoNCE, triplet |
| :class:`CandidateLoss` | ``from_candidates(scores, positive, valid)`` (a loss) | InfoNCE, SigLIP, triplet |

Example:
    >>> from alignfuse.encoders.tokenizer import Tokenizer
    >>> from alignfuse.models import build_scan
    >>> model = build_scan(Tokenizer.build(["a red circle"]), embed_dim=8,
    ...                    image_args={"width": 4, "out_dim": 8})
    >>> isinstance(model, PairwiseScorer), isinstance(model, TwoStageRanker)
    (True, False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from alignfuse.outputs import LossOutput


@runtime_checkable
class EmbeddingModel(Protocol):
    """One unit embedding per image and per text (a dual encoder)."""

    def prepare_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]: ...

    def encode_image(self, images: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text: dict[str, torch.Tensor]) -> torch.Tensor: ...


@runtime_checkable
class PairwiseScorer(Protocol):
    """No embedding per item: a score of every (image, text) pair from their tokens."""

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor: ...

    def text_tokens(self, text: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def score(
        self, regions: torch.Tensor, words: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor: ...


@runtime_checkable
class TwoStageRanker(Protocol):
    """Embeddings rank everything; a fusion re-scores each query's top ``rerank_k``."""

    rerank_k: int

    def image_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def text_features(
        self, text: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    def match_scores(self, *args: Any) -> torch.Tensor: ...


@runtime_checkable
class OwnSimilarity(Protocol):
    """A two-stage ranker whose first-stage similarity is not a dot product (BLIP-2: the
    best of each image's queries)."""

    def similarity(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor: ...

    def pair_similarity(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class CaptionGenerator(Protocol):
    """Captions an image; scores a caption by its likelihood given the image."""

    def generate(self, images: torch.Tensor) -> list[str]: ...

    def prefix(self, images: torch.Tensor) -> torch.Tensor: ...

    def log_likelihood(
        self, prefix: torch.Tensor, text: dict[str, torch.Tensor]
    ) -> torch.Tensor: ...


@runtime_checkable
class OwnObjective(Protocol):
    """Trains on its own objective around the configured loss (ITC + ITM + MLM, ...)."""

    def training_loss(self, batch: Mapping[str, Any], loss: nn.Module) -> LossOutput: ...


@runtime_checkable
class SimilarityLoss(Protocol):
    """A loss that also takes a ``(B, B)`` score matrix of a batch (pairwise models)."""

    def from_similarity(self, sims: torch.Tensor) -> LossOutput: ...


@runtime_checkable
class CandidateLoss(Protocol):
    """A loss of each query over its own candidate set with several positives (a question
    against its database's schema items)."""

    def from_candidates(
        self, scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None
    ) -> LossOutput: ...
