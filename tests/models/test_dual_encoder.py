"""The dual encoder keyed by modality: its image-text spellings equal the keyed ones, and
its bad inputs are named."""

from __future__ import annotations

import pytest
import torch

import alignfuse
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.models import DualEncoder

TEXTS = ["a red circle", "two blue squares"]


def _model() -> DualEncoder:
    torch.manual_seed(0)
    return alignfuse.create_model(
        "dual_encoder",
        tokenizer=Tokenizer.build(TEXTS),
        embed_dim=8,
        image_args={"width": 4, "out_dim": 8},
        text_args={"word_dim": 4, "hidden": 4},
    )


def test_keyed_and_image_text_spellings_agree():
    model, images = _model().eval(), torch.rand(2, 3, 64, 64)
    prepared = model.prepare("text", TEXTS)
    assert torch.equal(prepared["ids"], model.prepare_text(TEXTS)["ids"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode("image", images), model.encode_image(images))
        torch.testing.assert_close(model.encode("text", prepared), model.encode_text(prepared))
        a, b = model(images, prepared)
        manual = torch.nn.functional.normalize(
            model.image_proj(model.image_encoder(images)), dim=-1
        )
    torch.testing.assert_close(a, manual)
    assert model.modalities == ("image", "text") and b.shape == (2, 8)
    # the state-dict keys of image-text checkpoints are those of earlier versions
    assert {k.split(".")[0] for k in model.state_dict()} == {
        "image_encoder",
        "text_encoder",
        "image_proj",
        "text_proj",
    }


def test_bad_inputs_are_named():
    model = _model()
    with pytest.raises(ValueError, match="modality must be one of image, text, got 'audio'"):
        model.encode("audio", torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="modality must be one of image, text, got 'sound'"):
        model.prepare("sound", TEXTS)
    tower = model.text_encoder
    with pytest.raises(ValueError, match="modalities must name two different modalities"):
        DualEncoder(tower, tower, 8, modalities=("text", "text"))
    with pytest.raises(ValueError, match="embed_dim must be >= 1"):
        DualEncoder(model.image_encoder, tower, 0)
