"""WebDataset shards: brace expansion, export / load round trips, shards written and read by
the ``webdataset`` library itself, training from shards, and every malformed input."""

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from alignfuse.data import export_webdataset, load_webdataset
from alignfuse.data.webdataset import expand_shards
from alignfuse.errors import DataError


def _png(rgb, size=(6, 5)):
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(rgb, size=(6, 5)):
    buf = io.BytesIO()
    Image.new("RGB", size, rgb).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, blob in members:
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def test_brace_expansion():
    assert expand_shards("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_shards("{9..11}") == ["9", "10", "11"]
    assert expand_shards("{x,y}-{0..1}") == ["x-0", "x-1", "y-0", "y-1"]
    assert expand_shards(["p.tar", "q{1,2}.tar"]) == ["p.tar", "q1.tar", "q2.tar"]
    with pytest.raises(DataError, match="string or a list of strings"):
        expand_shards(3)
    for bad, msg in (("a{3..1}", "backwards"), ("a{b}", "neither"), ("a{0..2", "unbalanced")):
        with pytest.raises(DataError, match=msg):
            expand_shards(bad)


def test_export_then_load_round_trips(small_shapes, tmp_path):
    shards = export_webdataset(small_shapes, tmp_path, shard_size=25)
    assert [p.name for p in shards][:3] == [
        "train-000000.tar",
        "train-000001.tar",
        "train-000002.tar",
    ]
    n = {k: len(v) for k, v in small_shapes.splits.items()}
    splits = {k: str(tmp_path / f"{k}-{{000000..{(m - 1) // 25:06d}}}.tar") for k, m in n.items()}
    back = load_webdataset(splits)
    for name, split in small_shapes.splits.items():
        assert np.array_equal(back[name].images, split.images)  # PNG: lossless
        assert back[name].captions == split.captions
    # deterministic bytes: exporting again writes identical shards
    again = export_webdataset(small_shapes, tmp_path / "again", shard_size=25)
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in shards]


def test_shards_written_by_the_webdataset_library_load(tmp_path):
    wds = pytest.importorskip("webdataset")
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200)]
    with wds.TarWriter(str(tmp_path / "lib-000.tar")) as sink:
        sink.write({"__key__": "dir/s0", "jpg": _jpg(colours[0]), "txt": "a red box\nred square"})
        sink.write({"__key__": "dir/s1", "png": _png(colours[1]), "json": {"caption": "green"}})
    with wds.TarWriter(str(tmp_path / "lib-001.tar")) as sink:
        sink.write({"__key__": "s2", "png": _png(colours[2]), "json": {"captions": ["b", "c"]}})
    data = load_webdataset({"train": str(tmp_path / "lib-{000..001}.tar")})
    split = data["train"]
    assert split.extras["keys"] == ["dir/s0", "dir/s1", "s2"]
    assert split.captions == [["a red box", "red square"], ["green"], ["b", "c"]]
    assert split.images.shape == (3, 5, 6, 3)
    for im, rgb in zip(split.images, colours, strict=True):
        assert np.abs(im.reshape(-1, 3).mean(0) - rgb).max() < 3  # JPEG within a few levels


def test_our_shards_read_with_the_webdataset_library(small_shapes, tmp_path):
    wds = pytest.importorskip("webdataset")
    export_webdataset(small_shapes, tmp_path, shard_size=1000)
    samples = list(wds.WebDataset(str(tmp_path / "test-000000.tar"), shardshuffle=False))
    test = small_shapes["test"]
    assert len(samples) == len(test)
    for i, s in enumerate(samples[:10]):
        assert s["__key__"] == f"test_{i:08d}"
        assert json.loads(s["json"])["captions"] == test.captions[i]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(s["png"]))), test.images[i])


def test_resize_and_mixed_sizes(tmp_path):
    _tar(
        tmp_path / "m.tar",
        [
            ("a.png", _png((1, 2, 3), (8, 8))),
            ("a.txt", b"x"),
            ("b.png", _png((4, 5, 6), (4, 4))),
            ("b.txt", b"y"),
        ],
    )
    with pytest.raises(DataError, match="differ in size.*image_size"):
        load_webdataset({"train": str(tmp_path / "m.tar")})
    data = load_webdataset({"train": str(tmp_path / "m.tar")}, image_size=16)
    assert data["train"].images.shape == (2, 16, 16, 3)


def test_training_from_shards_equals_training_in_memory(tmp_path, tiny_overrides):
    from alignfuse.config import load_config
    from alignfuse.engine import Trainer, load_data

    cfg = load_config(None, [*tiny_overrides, "train.max_steps=4"])
    data = load_data(cfg)
    export_webdataset(data, tmp_path / "shards", shard_size=64)
    splits = {
        k: sorted(str(p) for p in (tmp_path / "shards").glob(f"{k}-*.tar"))
        for k in ("train", "val")
    }
    wcfg = load_config(
        None,
        [
            *tiny_overrides,
            "train.max_steps=4",
            "data.name=webdataset",
            f"data.args={{splits: {json.dumps(splits)}}}",
            "eval.splits=[val]",
        ],
    )
    quiet = {"progress": False, "log": lambda m: None}
    a = Trainer(cfg, data, tmp_path / "mem", **quiet)
    a.fit()
    b = Trainer(wcfg, load_data(wcfg), tmp_path / "wds", **quiet)
    b.fit()
    for k, v in a.model.state_dict().items():
        assert np.array_equal(v.numpy(), b.model.state_dict()[k].numpy()), k


def test_malformed_shards_name_the_shard_and_sample(tmp_path):
    with pytest.raises(DataError, match="pass splits="):
        load_webdataset(None)
    with pytest.raises(DataError, match="does not exist"):
        load_webdataset({"train": str(tmp_path / "missing-{0..1}.tar")})
    (tmp_path / "junk.tar").write_bytes(b"not a tar file at all" * 50)
    with pytest.raises(DataError, match="junk.tar.*not a readable tar"):
        load_webdataset({"train": str(tmp_path / "junk.tar")})
    # a shard cut short in the middle of a member
    good = _tar(tmp_path / "good.tar", [("a.png", _png((1, 1, 1))), ("a.txt", b"cap")])
    (tmp_path / "cut.tar").write_bytes(good.read_bytes()[:700])
    with pytest.raises(DataError, match="cut.tar"):
        load_webdataset({"train": str(tmp_path / "cut.tar")})
    cases = {
        "nocap": ([("a.png", _png((1, 1, 1)))], "sample 'a'.*no caption"),
        "noimg": ([("a.txt", b"cap")], "sample 'a'.*no image"),
        "badimg": ([("a.jpg", b"\xff\xd8garbage"), ("a.txt", b"c")], "cannot decode .jpg"),
        "badjson": ([("a.png", _png((1, 1, 1))), ("a.json", b"{oops")], "not valid JSON"),
        "nocapkey": ([("a.png", _png((1, 1, 1))), ("a.json", b'{"x": 1}')], '"captions"'),
        "empty": ([("a.png", _png((1, 1, 1))), ("a.txt", b"  \n ")], "caption is empty"),
        "binary": ([("a.png", _png((1, 1, 1))), ("a.txt", b"\xff\xfe\xfa")], "not UTF-8"),
        "dup": (
            [
                ("a.png", _png((1, 1, 1))),
                ("a.txt", b"c"),
                ("b.txt", b"c"),
                ("b.png", _png((1, 1, 1))),
                ("a.txt", b"d"),
            ],
            "key also used",
        ),
    }
    for name, (members, msg) in cases.items():
        path = _tar(tmp_path / f"{name}.tar", members)
        with pytest.raises(DataError, match=msg):
            load_webdataset({"train": str(path)})
    empty = _tar(tmp_path / "none.tar", [])
    with pytest.raises(DataError, match="hold no sample"):
        load_webdataset({"train": str(empty)})
    with pytest.raises(DataError, match="shard pattern or a list"):
        load_webdataset({"train": 3})
    with pytest.raises(DataError, match="image_size must be a positive integer"):
        load_webdataset({"train": str(good)}, image_size=0)


def test_links_and_folders_in_a_shard_are_skipped_never_followed(tmp_path):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tar:
        d = tarfile.TarInfo("folder")
        d.type = tarfile.DIRTYPE
        tar.addfile(d)
        link = tarfile.TarInfo("folder/evil.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        for name, blob in (("folder/ok.png", _png((9, 9, 9))), ("folder/ok.txt", b"fine")):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    split = load_webdataset({"train": str(path)})["train"]
    assert split.extras["keys"] == ["folder/ok"] and split.captions == [["fine"]]
