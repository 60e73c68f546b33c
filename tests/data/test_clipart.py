"""The clipart dataset: metadata, captions, deterministic splits with held-out keywords, and
the real Debian package where it is installed."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alignfuse.data import clipart
from alignfuse.data.clipart import file_words, load_clipart, read_metadata
from alignfuse.errors import DataError

SVG = """<svg xmlns="http://www.w3.org/2000/svg"><metadata><rdf:RDF><cc:Work>
<dc:title>{title}</dc:title><dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject>
<dc:creator><cc:Agent><dc:title>{author}</dc:title></cc:Agent></dc:creator>
</cc:Work></rdf:RDF></metadata></svg>"""

ANIMALS = ["cat", "dog", "cow", "hen", "fox", "owl", "yak", "eel", "bee", "ant", "elk", "emu"]
FOOD = ["apple", "pear", "plum", "bread", "cheese", "fig", "kiwi", "lime", "nut", "rice"]


def _write(
    root: Path,
    rel: str,
    title: str,
    keywords: list[str],
    author: str = "Ann",
    size: tuple[int, int] = (30, 20),
) -> None:
    png = root / "png" / rel
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", size, (200, 30, 30, 255)).save(png)
    svg = (root / "svg" / rel).with_suffix(".svg")
    svg.parent.mkdir(parents=True, exist_ok=True)
    items = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    svg.write_text(SVG.format(title=title, items=items, author=author))


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "openclipart"
    for i in range(60):
        name = ANIMALS[i % len(ANIMALS)]
        kws = ["animal", name] + (["rare&amp;odd"] if i % 20 == 0 else [])
        _write(root, f"animals/{name}_{i:02d}.png", f"{name.title()} {i}", kws)
    for i in range(60):
        name = FOOD[i % len(FOOD)]
        _write(root, f"food/fruit/{name}_{i:02d}.png", f"{name} {i}", ["food", name, "hash"])
    # a collection title shared by many drawings names none of them
    for i in range(25):
        _write(root, f"computer/icons/gg_away_{i}.png", "Flat Icon Collection", ["computer"])
    _write(root, "computer/author_named.png", "Ann", ["computer"], author="Ann")
    return root


def test_metadata_and_file_names(tree: Path) -> None:
    title, kws = read_metadata(tree / "svg/animals/cat_00.svg")
    assert title == "cat 0" and kws == ["animal", "cat", "rare&odd"]
    # noise tags and duplicates are dropped
    assert read_metadata(tree / "svg/food/fruit/apple_00.svg")[1] == ["food", "apple"]
    assert read_metadata(tree / "svg/missing.svg") == ("", [])
    # a title that is the author's name is no title
    assert read_metadata(tree / "svg/computer/author_named.svg")[0] == ""
    assert file_words(Path("bored_dog_01.png")) == "bored dog"
    assert file_words(Path("viewmag+.png")) == "viewmag"
    assert file_words(Path("12.png")) == "12"


def test_splits_captions_and_unseen_keywords(tree: Path, tmp_path) -> None:
    data = load_clipart(
        str(tree),
        image_size=16,
        n_val=10,
        n_test=20,
        n_unseen=15,
        cache_dir=str(tmp_path / "cache"),
    )
    assert set(data.splits) == {"train", "val", "test", "test_unseen"}
    assert data.info["classes"] == ["animals", "computer", "food"]
    total = sum(len(s) for s in data.splits.values())
    assert total == 146 and len(data["val"]) == 10 and len(data["test"]) == 20
    held = data.info["unseen_keywords"]
    assert held and len(data["test_unseen"]) >= 15
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, held)) + r")\b")
    for name in ("train", "val", "test"):
        for caps, kws in zip(data[name].captions, data[name].extras["keywords"], strict=True):
            assert not pattern.search(" ".join(caps)) and not set(kws) & set(held)
    for caps, kws in zip(
        data["test_unseen"].captions, data["test_unseen"].extras["keywords"], strict=True
    ):
        assert pattern.search(" ".join(caps)) or set(kws) & set(held)
    # captions: the name, then the name with its keywords; collections named by file
    every = {tuple(c) for s in data.splits.values() for c in s.captions}
    assert ("cat 0", "cat 0: animal, cat, rare&odd") in every or "rare&odd" in held
    assert any(c[0].startswith("gg away") for c in every)
    # images are letterboxed on white, uint8 squares
    img = data["train"].images[0]
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert (img[0] == 255).all()  # a 30 x 20 drawing leaves white rows on top
    cats = data["test"].extras["categories"]
    assert len(cats) == 20 and set(cats) <= {0, 1, 2}


def test_splits_are_a_function_of_the_seed(tree: Path, tmp_path) -> None:
    kw = dict(image_size=8, n_val=10, n_test=20, n_unseen=10, cache_dir=str(tmp_path))
    a, b = load_clipart(str(tree), **kw), load_clipart(str(tree), **kw)
    c = load_clipart(str(tree), seed=1, **kw)
    assert a["test"].extras["paths"] == b["test"].extras["paths"]
    assert a["test"].extras["paths"] != c["test"].extras["paths"]
    assert np.array_equal(a["train"].images, b["train"].images)
    # read back from the cache, a split is a slice of a memory-mapped file (streams from disk)
    assert isinstance(b["train"].images, np.memmap) and not b["train"].images.flags.writeable


def test_bad_input(tree: Path, tmp_path, monkeypatch) -> None:
    with pytest.raises(DataError, match="does not exist.*openclipart-png"):
        load_clipart(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PNG drawings"):
        load_clipart(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="n_test must be an integer >= 1"):
        load_clipart(str(tree), n_test=0)
    with pytest.raises(DataError, match="too few"):
        load_clipart(str(tree), n_val=100, n_test=100, cache_dir=str(tmp_path))
    # oversized and unreadable drawings are skipped with a count, never silently
    (tree / "png/animals/broken.png").write_bytes(b"not a png")
    monkeypatch.setattr(clipart, "MAX_PIXELS", 599)  # the 30 x 20 drawings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="no drawing left"):
            load_clipart(str(tree), n_val=5, n_test=5, cache_dir=str(tmp_path))
    monkeypatch.setattr(clipart, "MAX_PIXELS", 600)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_clipart(str(tree), n_val=5, n_test=5, image_size=8, cache_dir=str(tmp_path))
    assert data.info["skipped"] == ["animals/broken.png"]
    assert any("skipped 1 drawing" in str(w.message) for w in caught)


REAL = Path(clipart.DEFAULT_ROOT)


@pytest.mark.skipif(
    not (REAL / "png").is_dir(), reason="Debian package openclipart-png not installed"
)
def test_the_real_package(tmp_path) -> None:
    data = load_clipart(
        limit=400, n_val=40, n_test=80, n_unseen=40, image_size=32, cache_dir=str(tmp_path)
    )
    assert {"animals", "food", "computer"} <= set(data.info["classes"])
    n = sum(len(s) for s in data.splits.values())
    assert 380 <= n <= 420
    caps = [c for s in data.splits.values() for cs in s.captions for c in cs]
    assert all(c and c == c.lower() for c in caps)
    assert not any("hash(" in c for c in caps)


def test_karpathy_export_keeps_the_classes(tree: Path, tmp_path) -> None:
    from alignfuse.data import export_captions, load_captions

    data = load_clipart(
        str(tree), image_size=8, n_val=10, n_test=20, n_unseen=10, cache_dir=str(tmp_path / "cache")
    )
    back = load_captions(str(export_captions(data, tmp_path / "export")))
    assert back.info["classes"] == data.info["classes"]
    for name, split in data.splits.items():
        assert back[name].captions == split.captions
        assert back[name].extras["categories"] == split.extras["categories"]
        assert np.array_equal(back[name].images, split.images)


def test_cli_exports_clipart(tree: Path, tmp_path, monkeypatch, capsys) -> None:
    from alignfuse.cli import main

    monkeypatch.setenv("ALIGNFUSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert (
        main(
            [
                "data",
                "clipart",
                "--root",
                str(tree),
                "--out",
                str(out),
                "--image-size",
                "16",
                "--n-val",
                "5",
                "--n-test",
                "10",
            ]
        )
        == 0
    )
    assert (out / "dataset_clipart.json").is_file()
    assert "test_unseen" in capsys.readouterr().out
