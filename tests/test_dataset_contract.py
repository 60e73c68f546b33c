"""Every registered dataset, created through the registry on tiny settings (loaders of formats
read from small files the test writes): a registration without a case here fails, so it is
tested the day it is registered.

The contract: what ``create_dataset`` returns is one of the data types the tasks read, has its
named splits, each non-empty, and indexing a missing split names the ones there are."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import alignfuse
from alignfuse.data.base import ImageTextData
from alignfuse.data.clips import ClipData
from alignfuse.data.spider import LinkingData
from alignfuse.data.spoken import SpokenData
from alignfuse.data.twoview import TwoViewData
from alignfuse.errors import DataError

SMALL_SHAPES = {"n_train": 12, "n_val": 4, "n_test": 6, "n_winoground": 2, "use_cache": False}


def _shapes(tmp: Path) -> ImageTextData:
    return alignfuse.create_dataset("shapes", **SMALL_SHAPES)


def _captions(tmp: Path) -> dict[str, Any]:
    from alignfuse.data.captions import export_captions

    return {"root": str(export_captions(_shapes(tmp), tmp / "karpathy"))}


def _webdataset(tmp: Path) -> dict[str, Any]:
    from alignfuse.data.webdataset import export_webdataset

    shards = export_webdataset(_shapes(tmp), tmp / "wds", shard_size=8)
    by_split: dict[str, list[str]] = {}
    for s in shards:
        by_split.setdefault(s.name.split("-")[0], []).append(str(s))
    return {"splits": by_split}


def _precomputed(tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        np.save(tmp / f"{split}_ims.npy", rng.normal(size=(n, 4, 8)).astype(np.float32))
        lines = [f"a caption {i} {j}" for i in range(n) for j in range(5)]
        (tmp / f"{split}_caps.txt").write_text("\n".join(lines) + "\n")
    return {"root": str(tmp)}


def _twoview_files(tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    np.save(tmp / "x.npy", rng.normal(size=(40, 5)))
    np.save(tmp / "y.npy", rng.normal(size=(40, 3)))
    return {"x": str(tmp / "x.npy"), "y": str(tmp / "y.npy")}


def _spider(tmp: Path) -> dict[str, Any]:
    from helpers import write_spider_folder

    root = write_spider_folder(tmp)
    return {
        "questions": str(root / "spider-syn" / "dev.json"),
        "tables": str(root / "spider-syn" / "tables.json"),
    }


def _spider_linking(tmp: Path) -> dict[str, Any]:
    from helpers import write_spider_folder

    return {"root": str(write_spider_folder(tmp))}


def _spoken(tmp: Path) -> dict[str, Any]:
    from alignfuse.data.espeak import espeak_available

    if not espeak_available():
        pytest.skip("libespeak-ng is not installed")
    return {"n_sentences": 3, "renderings": 1, "use_cache": False}


def _clipart(tmp: Path) -> dict[str, Any]:
    from alignfuse.data.clipart import DEFAULT_ROOT

    if not Path(DEFAULT_ROOT).is_dir() or importlib.util.find_spec("PIL") is None:
        pytest.skip(
            "the Open Clip Art drawings are not installed (apt-get install openclipart-png)"
        )
    return {
        "limit": 300,
        "n_val": 20,
        "n_test": 20,
        "n_unseen": 20,
        "image_size": 32,
        "cache_dir": str(tmp),
    }


# name -> (arguments, given a scratch folder; the data type and the splits it must have)
CASES: dict[str, tuple[Callable[[Path], dict[str, Any]], type, set[str]]] = {
    "shapes": (lambda _: SMALL_SHAPES, ImageTextData, {"train", "val", "test", "test_dk"}),
    "captions": (_captions, ImageTextData, {"train", "val", "test"}),
    "webdataset": (_webdataset, ImageTextData, {"train", "val", "test"}),
    "precomputed": (_precomputed, ImageTextData, {"train", "test"}),
    "clipart": (_clipart, ImageTextData, {"train", "val", "test", "test_unseen"}),
    "digits_twoview": (lambda _: {"pairs_per_image": 1}, TwoViewData, {"train", "val", "test"}),
    "twoview_files": (_twoview_files, TwoViewData, {"train", "val", "test"}),
    "clips": (
        lambda _: {"n_train": 3, "n_val": 1, "n_test": 2, "use_cache": False},
        ClipData,
        {"train", "val", "test"},
    ),
    "spoken": (_spoken, SpokenData, set()),
    "spider": (_spider, LinkingData, set()),
    "spider_linking": (_spider_linking, dict, {"train", "dev", "syn", "dk"}),
}


def test_every_registered_dataset_has_a_case():
    assert set(alignfuse.list_datasets()) == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_dataset_contract(name: str, tmp_path: Path) -> None:
    args, kind, splits = CASES[name]
    data = alignfuse.create_dataset(name, **args(tmp_path))
    assert isinstance(data, kind), type(data)
    if isinstance(data, SpokenData):
        assert data.sentences and len(data.utterances) >= len(data.sentences)
        return
    if isinstance(data, LinkingData):
        assert len(data) > 0
        return
    found = data if isinstance(data, dict) else data.splits
    assert splits <= set(found), sorted(found)
    for split in splits:
        assert len(found[split]) > 0, split
    if not isinstance(data, dict):
        with pytest.raises(DataError, match="no split 'nope'"):
            data["nope"]
