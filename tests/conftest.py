from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


TINY_OVERRIDES = [
    "data.args={n_train: 96, n_val: 32, n_test: 32, n_winoground: 8, use_cache: false}",
    "model.embed_dim=16",
    "model.args={image_args: {width: 4, out_dim: 16}, text_args: {word_dim: 8, hidden: 8}}",
    "train.epochs=2",
    "train.batch_size=16",
    "train.captions_per_image=2",
    "train.checkpoint_every=5",
    "eval.val_subset=32",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """Overrides that make an experiment train in about a second."""
    return list(TINY_OVERRIDES)


@pytest.fixture(scope="session")
def small_shapes():
    from alignfuse.data import load_shapes

    return load_shapes(
        n_train=64, n_val=16, n_test=120, n_winoground=12, use_cache=False, workers=1
    )
