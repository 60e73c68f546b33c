"""Precomputed region features (SCAN / VSE++ release layout): loading, memory mapping, errors,
and models training on them through the image_text task."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from alignfuse.data.precomputed import load_precomputed
from alignfuse.errors import DataError

COLOURS = ["red", "green", "blue", "white"]
SHAPES = ["circle", "square", "star"]


def _write(root: Path, stem: str, n: int, regions: int = 6, dim: int = 12, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    feats, lines = [], []
    for i in range(n):
        c, s = COLOURS[i % 4], SHAPES[(i // 4) % 3]
        f = rng.normal(size=(regions, dim)).astype(np.float32)
        f[:, i % 4] += 3.0  # the colour and the shape show in the features
        f[:, 4 + (i // 4) % 3] += 3.0
        feats.append(f)
        lines += [f"a {c} {s}", f"the {s} is {c}"]
    np.save(root / f"{stem}_ims.npy", np.stack(feats))
    (root / f"{stem}_caps.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "toy_precomp"
    root.mkdir()
    _write(root, "train", 48)
    _write(root, "dev", 12, seed=1)
    _write(root, "test", 24, seed=2)
    return root


def test_loads_the_release_layout_memory_mapped(folder: Path) -> None:
    data = load_precomputed(str(folder))
    assert set(data.splits) == {"train", "val", "test"} and data.info["dim"] == 12
    test = data["test"]
    assert test.is_features and test.images.shape == (24, 6, 12)
    assert isinstance(test.images, np.memmap)  # rows are read from disk when used
    assert test.captions[5] == ["a green square", "the square is green"]


def test_bad_files_fail_with_their_name(folder: Path, tmp_path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_precomputed(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no <split>_ims.npy"):
        load_precomputed(str(tmp_path / "empty"))
    (folder / "test_caps.txt").write_text("only\nthree\nlines\n")
    with pytest.raises(DataError, match="3 lines for 24 images"):
        load_precomputed(str(folder))
    (folder / "test_caps.txt").unlink()
    with pytest.raises(DataError, match="no captions file test_caps.txt"):
        load_precomputed(str(folder))
    _write(folder, "test", 24, dim=7)
    with pytest.raises(DataError, match="feature sizes differ"):
        load_precomputed(str(folder))
    # an object array is never unpickled
    np.save(folder / "test_ims.npy", np.array([{"x": 1}] * 24, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="without unpickling"):
        load_precomputed(str(folder))
    (folder / "test_ims.npy").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="without unpickling"):
        load_precomputed(str(folder))


@pytest.mark.parametrize("model", ["dual_encoder", "scan"])
def test_models_train_on_features(folder: Path, tmp_path, model: str) -> None:
    from alignfuse.config import ExperimentConfig, from_dict
    from alignfuse.engine.fit import Fit
    from alignfuse.tasks import create_task

    cfg = from_dict(
        ExperimentConfig,
        {
            "name": f"precomp_{model}",
            "data": {"name": "precomputed", "args": {"root": str(folder)}},
            "model": {
                "name": model,
                "embed_dim": 16,
                "image_encoder": "precomputed",
                "text_encoder": "bigru",
                "args": {"image_args": {"dim": 12}, "text_args": {"word_dim": 8, "hidden": 8}},
            },
            "loss": {"name": "info_nce"},
            "train": {"epochs": 15, "batch_size": 16, "captions_per_image": 2, "lr": 5e-3},
            "eval": {"splits": ["test"], "val_subset": 12},
        },
    )
    task = create_task(cfg, run_dir=tmp_path)
    fit = Fit(task, tmp_path / "run", progress=False, log=lambda m: None)
    fit.fit()
    metrics, _ = task.evaluate(fit.model)
    # 24 test images in 12 (colour, shape) kinds: chance t2i R@5 is about 5/24
    assert metrics["test/t2i_r5"] > 0.5, metrics["test/t2i_r5"]


def test_the_tower_refuses_images() -> None:
    from alignfuse.encoders.precomputed import PrecomputedFeatures

    with pytest.raises(ValueError, match="is the data images rather than features"):
        PrecomputedFeatures(12)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        PrecomputedFeatures(0)
