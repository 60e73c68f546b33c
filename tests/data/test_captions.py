import json

import numpy as np
import pytest
import torch
from PIL import Image

from alignfuse.config import load_config
from alignfuse.data import export_captions, load_captions
from alignfuse.engine import Trainer, evaluate
from alignfuse.errors import DataError


def test_export_then_load_round_trips(small_shapes, tmp_path):
    export_captions(small_shapes, tmp_path)
    ann = json.loads((tmp_path / "dataset_shapes.json").read_text())
    e = ann["images"][0]
    assert {"filename", "split", "sentences"} <= set(e) and "raw" in e["sentences"][0]
    back = load_captions(root=str(tmp_path))
    for split in ("train", "val", "test", "test_dk"):
        assert np.array_equal(back[split].images, small_shapes[split].images)
        assert back[split].captions == small_shapes[split].captions
    for split in ("test", "test_dk"):
        assert back[split].extras["negatives"] == small_shapes[split].extras["negatives"]
    assert back.winoground.captions == small_shapes.winoground.captions
    assert np.array_equal(back.winoground.images, small_shapes.winoground.images)


def test_karpathy_coco_style_with_filepath_and_restval(tmp_path):
    (tmp_path / "val2014").mkdir()
    for i, color in enumerate([(255, 0, 0), (0, 0, 255), (0, 255, 0)]):
        Image.new("RGB", (40, 30), color).save(tmp_path / "val2014" / f"im{i}.jpg")
    ann = {
        "dataset": "coco",
        "images": [
            {
                "filepath": "val2014",
                "filename": "im0.jpg",
                "split": "restval",
                "sentences": [{"raw": "red"}],
            },
            {
                "filepath": "val2014",
                "filename": "im1.jpg",
                "split": "train",
                "sentences": [{"raw": "blue"}, {"raw": "sky"}],
            },
            {
                "filepath": "val2014",
                "filename": "im2.jpg",
                "split": "test",
                "sentences": [{"raw": "green"}],
            },
        ],
    }
    (tmp_path / "dataset_coco.json").write_text(json.dumps(ann))
    data = load_captions(root=str(tmp_path), image_size=16)
    assert data.name == "coco" and len(data["train"]) == 2 and len(data["test"]) == 1
    assert data["train"].images.shape == (2, 16, 16, 3)
    assert data["train"].captions == [["red"], ["blue", "sky"]]
    with pytest.raises(DataError, match="differ in size"):
        Image.new("RGB", (10, 10)).save(tmp_path / "val2014" / "im1.jpg")
        load_captions(root=str(tmp_path))


def test_bad_folders_and_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_captions(root=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_captions(root=str(empty))
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match=r"no dataset\*\.json"):
        load_captions(root=str(empty))
    (empty / "dataset_x.json").write_text("{not json")
    with pytest.raises(DataError, match="not Karpathy-split JSON"):
        load_captions(root=str(empty))
    (empty / "dataset_x.json").write_text(json.dumps({"images": [{"filename": "a.png"}]}))
    with pytest.raises(DataError, match="lacks filename/split/sentences"):
        load_captions(root=str(empty))


def test_captions_naming_missing_images(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    ann = {
        "images": [
            {"filename": "a.png", "split": "train", "sentences": [{"raw": "x"}]},
            {"filename": "gone.png", "split": "train", "sentences": [{"raw": "y"}]},
        ]
    }
    (tmp_path / "dataset_t.json").write_text(json.dumps(ann))
    with pytest.raises(
        DataError, match=r"1 image\(s\) named in dataset_t.json do not exist.*gone.png"
    ):
        load_captions(root=str(tmp_path))


def test_corrupt_image_file(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not a png")
    ann = {"images": [{"filename": "a.png", "split": "train", "sentences": [{"raw": "x"}]}]}
    (tmp_path / "dataset_t.json").write_text(json.dumps(ann))
    with pytest.raises(DataError, match="cannot read image"):
        load_captions(root=str(tmp_path))


def test_training_on_exported_folder_equals_in_memory(tmp_path, tiny_overrides):
    mem_cfg = load_config(None, [*tiny_overrides, "name=mem"])
    from alignfuse.engine import load_data

    data = load_data(mem_cfg)
    export_captions(data, tmp_path / "export")
    disk_cfg = load_config(
        None,
        [
            *tiny_overrides,
            "name=disk",
            "data.name=captions",
            f"data.args={{root: {tmp_path / 'export'}}}",
        ],
    )
    disk = load_data(disk_cfg)
    results = []
    for cfg, d in ((mem_cfg, data), (disk_cfg, disk)):
        tr = Trainer(cfg, d, tmp_path / cfg.name, progress=False, log=lambda m: None)
        tr.fit()
        metrics, _ = evaluate(tr.model, d, ["test", "test_dk"])
        results.append((metrics, tr.model.state_dict()))
    assert results[0][0] == results[1][0]
    for k, v in results[0][1].items():
        assert torch.equal(v, results[1][1][k]), k


def test_streamed_images_equal_the_decoded_ones(small_shapes, tmp_path):
    from alignfuse.data.captions import LazyImages
    from alignfuse.encoders.tokenizer import Tokenizer
    from alignfuse.models.dual_encoder import build_dual_encoder

    folder = export_captions(small_shapes, tmp_path / "out")
    full = load_captions(str(folder), image_size=64)
    lazy = load_captions(str(folder), image_size=64, stream=True)
    test = lazy["test"]
    assert isinstance(test.images, LazyImages) and test.images.shape == full["test"].images.shape
    idx = np.array([5, 0, 7])
    assert np.array_equal(test.images[idx], full["test"].images[idx])
    assert np.array_equal(test.images[2:4], full["test"].images[2:4])
    assert np.array_equal(np.asarray(test.images), full["test"].images)
    # evaluation reads batches from disk and gives the same figures
    torch.manual_seed(0)
    model = build_dual_encoder(
        Tokenizer.build(full.train_texts),
        embed_dim=8,
        image_args={"width": 2, "out_dim": 8},
        text_args={"word_dim": 4, "hidden": 4},
    )
    a, _ = evaluate(model, full, ["test"], batch_size=16)
    b, _ = evaluate(model, lazy, ["test"], batch_size=16)
    assert a == b
    with pytest.raises(DataError, match="stream=True needs image_size"):
        load_captions(str(folder), stream=True)
