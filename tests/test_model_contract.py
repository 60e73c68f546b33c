"""Every registered model, built through the registry with tiny arguments and run through the
capability protocols it claims (as timm tests every entry of ``list_models()``): a
registration without a case here fails, so it is tested the day it is registered.

The protocols (:mod:`alignfuse.models.protocols`, :mod:`alignfuse.models.linkers`): an
embedding model gives unit vectors of both modalities; a pairwise scorer a score per (image,
text) pair; a captioner one caption per image; a model with its own objective a finite loss
whose gradient reaches its parameters; a schema linker one finite score per schema item."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import alignfuse
from alignfuse.encoders.pretrained import minilm_available
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.losses import InfoNCELoss
from alignfuse.models import linkers
from alignfuse.models.dual_encoder import DualEncoder
from alignfuse.models.protocols import (
    CaptionGenerator,
    EmbeddingModel,
    OwnObjective,
    PairwiseScorer,
)

TEXTS = ["a red circle", "two green stars above a blue square"]
TOKENIZER = Tokenizer.build(TEXTS)
CNN = {"image_args": {"width": 4, "out_dim": 16}}
QUESTION = "how many stars are green"
ITEMS = ["star colour", "star count", "square"]


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (an optional extra)")


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64)


def _unit(x: torch.Tensor, n: int) -> None:
    assert x.ndim == 2 and x.shape[0] == n and torch.isfinite(x).all()
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(n), atol=1e-4, rtol=0)


def _embedding(model: Any, tmp: Path) -> None:
    assert isinstance(model, EmbeddingModel)
    with torch.no_grad():
        _unit(model.encode_image(_images()), 2)
        _unit(model.encode_text(model.prepare_text(TEXTS)), 2)


def _embedding_and_objective(model: Any, tmp: Path) -> None:
    _embedding(model, tmp)
    _own_objective(model, tmp)


def _own_objective(model: Any, tmp: Path) -> None:
    assert isinstance(model, OwnObjective)
    batch = {"images": _images(), "text": model.prepare_text(TEXTS)}
    out = model.training_loss(batch, InfoNCELoss())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def _pairwise(model: Any, tmp: Path) -> None:
    assert isinstance(model, PairwiseScorer)
    with torch.no_grad():
        regions = model.image_tokens(_images())
        words, mask = model.text_tokens(model.prepare_text(TEXTS))
        scores = model.score(regions, words, mask)
    assert scores.shape == (2, 2) and torch.isfinite(scores).all()


def _captioner(model: Any, tmp: Path) -> None:
    assert isinstance(model, CaptionGenerator)
    model.eval()
    with torch.no_grad():
        caps = model.generate(_images())
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    _own_objective(model.train(), tmp)


def _speech(model: Any, tmp: Path) -> None:
    assert isinstance(model, DualEncoder) and model.modalities == ("audio", "text")
    waves = [np.sin(np.linspace(0, 400, 8000)), np.random.default_rng(0).normal(size=6000)]
    with torch.no_grad():
        _unit(model.encode("audio", model.prepare("audio", waves, 16000)), 2)
        _unit(model.encode("text", model.prepare("text", TEXTS)), 2)


def _cca_dual(model: Any, tmp: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
    texts = [TEXTS[i % 2] + f" {i}" for i in range(12)]
    model.fit_pairs(images, texts, np.arange(12))
    _embedding(model, tmp)


def _scores(out: Any, n: int) -> None:
    s = torch.as_tensor(np.asarray(out.detach() if torch.is_tensor(out) else out))
    assert s.shape == (n,) and torch.isfinite(s).all()


def _text_linker(model: Any, tmp: Path) -> None:
    assert isinstance(model, linkers.TextScorer)
    _scores(model.score_items(QUESTION, ITEMS), len(ITEMS))


def _embedding_linker(model: Any, tmp: Path) -> None:
    assert isinstance(model, linkers.EmbeddingScorer)
    q, items = torch.randn(1, 8), torch.randn(1, len(ITEMS), 8)
    if isinstance(model, linkers.PairFitScorer):
        model.fit_pairs(torch.randn(20, 8), torch.randn(20, 8))
    _scores(model.score_embeddings(q, items)[0], len(ITEMS))


def _vocab_linker(model: Any, tmp: Path) -> None:
    assert isinstance(model, linkers.VocabScorer)
    q = model.encode_texts([QUESTION], "question")
    items = model.encode_texts(ITEMS, "item")
    _unit(q, 1)
    _unit(items, len(ITEMS))


def _hidden_linker(model: Any, tmp: Path) -> None:
    assert isinstance(model, linkers.HiddenScorer)
    layer, _ = model.hidden_input()
    assert layer >= 0
    hidden, mask = torch.randn(2, 5, 384), torch.ones(2, 5, dtype=torch.bool)
    _unit(model.encode_hidden(hidden, mask), 2)


def _token_linker(model: Any, tmp: Path) -> None:
    assert isinstance(model, linkers.TokenScorer)
    items, mask = torch.randn(len(ITEMS), 3, 8), torch.ones(len(ITEMS), 3, dtype=torch.bool)
    mask[0, 2] = False
    with torch.no_grad():
        _scores(model.score_tokens(torch.randn(4, 8), items, mask), len(ITEMS))


def _graph_linker(model: Any, tmp: Path) -> None:
    assert isinstance(model, linkers.GraphScorer)
    graph = torch.eye(len(ITEMS))
    with torch.no_grad():
        _scores(model.score_graph(torch.randn(8), torch.randn(len(ITEMS), 8), graph), len(ITEMS))


def _hf(tmp: Path) -> dict[str, Any]:
    _needs("transformers")
    from helpers import save_tiny_hf

    return {"path": str(save_tiny_hf(tmp / "clip", "clip"))}


def _frozen_towers(tmp: Path) -> dict[str, Any]:
    from alignfuse.encoders.efficientnet import efficientnet_available

    if not (minilm_available() and efficientnet_available()):
        pytest.skip("cca_dual's frozen towers need the extras images and minilm")
    return {"embed_dim": 4}


def _minilm(tmp: Path) -> dict[str, Any]:
    if not minilm_available():
        pytest.skip("the MiniLM package is not installed (extra minilm)")
    return {}


# name -> (constructor arguments, given a scratch folder; the protocol check)
CASES: dict[str, tuple[Callable[[Path], dict[str, Any]], Callable[[Any, Path], None]]] = {
    "dual_encoder": (lambda _: {"tokenizer": TOKENIZER, "embed_dim": 8, **CNN}, _embedding),
    "speech_text": (
        lambda _: {
            "tokenizer": TOKENIZER,
            "embed_dim": 8,
            "text_args": {"word_dim": 4, "hidden": 4},
            "audio_args": {"n_mels": 16, "width": 8, "blocks": 2, "out_dim": 8},
        },
        _speech,
    ),
    "scan": (lambda _: {"tokenizer": TOKENIZER, "embed_dim": 8, **CNN}, _pairwise),
    "albef": (
        lambda _: {
            "tokenizer": TOKENIZER,
            "embed_dim": 8,
            "width": 16,
            "depth": 1,
            "heads": 2,
            **CNN,
        },
        _embedding_and_objective,
    ),
    "qformer": (
        lambda _: {
            "tokenizer": TOKENIZER,
            "embed_dim": 8,
            "width": 16,
            "heads": 2,
            "n_queries": 4,
            **CNN,
        },
        _own_objective,
    ),
    "prefix_lm": (
        lambda _: {"tokenizer": TOKENIZER, "width": 16, "depth": 1, "heads": 2, **CNN},
        _captioner,
    ),
    "cca_dual": (_frozen_towers, _cca_dual),
    "hf_dual": (_hf, _embedding),
    "string_match": (lambda _: {}, _text_linker),
    "bm25": (lambda _: {}, _text_linker),
    "embedding_cosine": (lambda _: {}, _embedding_linker),
    "schema_dual_encoder": (lambda _: {"dim": 8}, _embedding_linker),
    "projection_linker": (lambda _: {"n_components": 4}, _embedding_linker),
    "vocab_dual_encoder": (
        lambda _: {
            "tokenizer": Tokenizer.build([QUESTION, *ITEMS]),
            "word_dim": 4,
            "hidden": 4,
            "dim": 8,
        },
        _vocab_linker,
    ),
    "finetuned_dual_encoder": (_minilm, _hidden_linker),
    "token_scan": (lambda _: {"dim": 8, "trainable": True}, _token_linker),
    "token_ot": (lambda _: {"dim": 8}, _token_linker),
    "cross_encoder": (lambda _: {"dim": 8, "width": 16, "heads": 2, "layers": 1}, _token_linker),
    "schema_graph_encoder": (lambda _: {"dim": 8}, _graph_linker),
}


def test_every_registered_model_has_a_case():
    assert set(alignfuse.list_models()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_model_contract(name: str, tmp_path: Path) -> None:
    args, check = CASES[name]
    torch.manual_seed(0)
    model = alignfuse.create_model(name, **args(tmp_path))
    check(model, tmp_path)
