"""The captions format of the field's retrieval work, and export of built-in data to it.

The Karpathy-split JSON of COCO and Flickr30k (``dataset_coco.json``, ``dataset_flickr30k.json``)::

    {"dataset": "coco",
     "images": [{"filename": "x.jpg", "filepath": "val2014", "split": "test",
                 "sentences": [{"raw": "A man riding a horse."}, ...]}, ...]}

``filepath`` is optional; so is ``category`` (a class name on every entry labels the images
for zero-shot classification and the linear probe). Split ``restval`` is merged into
``train`` as is customary. A folder
written by :func:`export_captions` also holds ``extras.json`` (hard negatives and Winoground
groups), so the compositional probes work on an exported copy too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alignfuse.data.base import ImageTextData, ImageTextSplit, WinogroundSet
from alignfuse.errors import DataError
from alignfuse.registry import DATASETS

SPLIT_ALIASES = {"restval": "train"}


def _find_annotations(root: Path) -> Path:
    found = sorted(root.glob("dataset*.json"))
    if not found:
        raise DataError(
            f"captions folder {str(root)!r} holds no dataset*.json annotation file "
            "(Karpathy-split format)"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DataError(
            f"captions folder {str(root)!r} holds several annotation files ({names}); "
            "pass annotations="
        )
    return found[0]


def _read_image(path: Path, image_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as f:
            im = f.convert("RGB")
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, Image.DecompressionBombError) as err:  # unreadable, or too many pixels
        raise DataError(f"cannot read image {str(path)!r}: {err}") from None


class LazyImages:
    """Image files decoded when indexed: an array-like ``uint8 (N, size, size, 3)`` that reads
    only the rows a batch takes, so a split larger than memory trains (``stream=True``).

    Example:
        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 6), (255, 0, 0)).save(d / "a.png")
        >>> lazy = LazyImages([d / "a.png"] * 3, 4)
        >>> lazy.shape, lazy[[0, 2]].shape, int(lazy[1][0, 0, 0])
        ((3, 4, 4, 3), (2, 4, 4, 3), 255)
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, paths: list[Path], image_size: int) -> None:
        self.paths, self.image_size = list(paths), image_size

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.image_size, self.image_size, 3)

    def __len__(self) -> int:
        return len(self.paths)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return _read_image(self.paths[int(index)], self.image_size)
        rows = np.arange(len(self.paths))[index]
        if rows.size == 0:
            return np.zeros((0, self.image_size, self.image_size, 3), np.uint8)
        return np.stack([_read_image(self.paths[int(i)], self.image_size) for i in rows])


def _stack(images: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise DataError(f"{where}: images differ in size {sorted(shapes)[:3]}; pass image_size=")
    return np.stack(images)


@DATASETS.register("captions")
def load_captions(
    root: str | None = None,
    annotations: str | None = None,
    image_dir: str | None = None,
    image_size: int | None = None,
    stream: bool = False,
) -> ImageTextData:
    """Image-caption data in the Karpathy-split JSON format plus an image folder.

    Args:
        root: dataset folder (holding ``dataset*.json`` and ``images/``).
        annotations: the JSON file (default: the one ``dataset*.json`` in ``root``).
        image_dir: folder the file names are relative to (default ``root/images`` if it
            exists, else ``root``); an entry's ``filepath`` is joined in between.
        image_size: resize every image to ``image_size x image_size`` (default: keep).
        stream: decode images when a batch takes them instead of all at once
            (:class:`LazyImages`; needs ``image_size``): memory stays flat, every epoch
            decodes again.

    Returns:
        :class:`ImageTextData` with one split per ``split`` value found.
    """
    if root is None and annotations is None:
        raise DataError("captions: pass root= (a dataset folder) or annotations= (a JSON file)")
    base = Path(root) if root is not None else Path(str(annotations)).parent
    if not base.is_dir():
        raise DataError(f"captions: dataset folder {str(base)!r} does not exist")
    if not any(base.iterdir()):
        raise DataError(f"captions: dataset folder {str(base)!r} is empty")
    ann_path = Path(annotations) if annotations is not None else _find_annotations(base)
    if not ann_path.is_file():
        raise DataError(f"captions: annotation file {str(ann_path)!r} does not exist")
    try:
        ann = json.loads(ann_path.read_text())
        entries = ann["images"]
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"captions: {str(ann_path)!r} is not Karpathy-split JSON (need images[]): {err}"
        ) from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"captions: {str(ann_path)!r} lists no images")
    img_root = (
        Path(image_dir) if image_dir else (base / "images" if (base / "images").is_dir() else base)
    )
    by_split: dict[str, list[tuple[str, list[str]]]] = {}
    categories: dict[str, list[str | None]] = {}
    missing = []
    for k, e in enumerate(entries):
        try:
            rel = Path(e.get("filepath", "")) / e["filename"]
            split = SPLIT_ALIASES.get(e["split"], e["split"])
            caps = [s["raw"] for s in e["sentences"]]
            categories.setdefault(split, []).append(e.get("category"))
        except (KeyError, TypeError, AttributeError) as err:
            raise DataError(
                f"captions: entry {k} of {str(ann_path)!r} lacks filename/split/sentences[].raw "
                f"({err})"
            ) from None
        if not caps:
            raise DataError(f"captions: image {str(rel)!r} has no sentences")
        if not (img_root / rel).is_file():
            missing.append(str(rel))
        by_split.setdefault(split, []).append((str(rel), caps))
    if missing:
        raise DataError(
            f"captions: {len(missing)} image(s) named in {ann_path.name} do not exist under "
            f"{str(img_root)!r}, e.g. {', '.join(missing[:3])}"
        )
    cache: dict[str, np.ndarray] = {}

    def read(rel: str) -> np.ndarray:
        if rel not in cache:
            cache[rel] = _read_image(img_root / rel, image_size)
        return cache[rel]

    # an optional "category" on every entry labels the images (zero-shot, linear probe)
    labelled = all(c is not None for cats in categories.values() for c in cats)
    classes = sorted({str(c) for cats in categories.values() for c in cats}) if labelled else []
    if stream and image_size is None:
        raise DataError("captions: stream=True needs image_size (every row the same shape)")
    splits = {}
    for split, items in by_split.items():
        images: Any = (
            LazyImages([img_root / rel for rel, _ in items], image_size)  # type: ignore[arg-type]
            if stream
            else _stack([read(rel) for rel, _ in items], f"split {split!r}")
        )
        extras: dict[str, Any] = {"filenames": [rel for rel, _ in items]}
        if classes:
            extras["categories"] = [classes.index(str(c)) for c in categories[split]]
        splits[split] = ImageTextSplit(split, images, [caps for _, caps in items], extras)
    wino = None
    extras_path = ann_path.parent / "extras.json"
    if extras_path.is_file():
        try:
            extras = json.loads(extras_path.read_text())
        except ValueError as err:
            raise DataError(f"captions: {str(extras_path)!r} is not valid JSON: {err}") from None
        for split_name, negs in (extras.get("negatives") or {}).items():
            if split_name in splits:
                splits[split_name].extras["negatives"] = negs
        groups = extras.get("winoground") or []
        if groups:
            imgs = np.stack([np.stack([read(f) for f in g["images"]]) for g in groups])
            wino = WinogroundSet(
                imgs, [tuple(g["captions"]) for g in groups], [g["kind"] for g in groups]
            )
    info: dict[str, Any] = {"root": str(base)}
    if classes:
        info["classes"] = classes
    return ImageTextData(ann.get("dataset", base.name), splits, wino, info)


def export_captions(data: ImageTextData, out: str | Path) -> Path:
    """Write a dataset as PNG images plus Karpathy-split JSON (``dataset_<name>.json``).

    Splits ``test_dk`` and any other split whose images equal the test images reuse the
    test files. Hard negatives and Winoground groups go to ``extras.json``.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    entries: list[dict[str, Any]] = []
    classes = data.info.get("classes")
    test = data.splits.get("test")
    for name, split in data.splits.items():
        shared = name != "test" and test is not None and split.images is test.images
        prefix = "test" if shared else name
        for i, caps in enumerate(split.captions):
            fname = f"{prefix}_{i:06d}.png"
            if not shared:
                Image.fromarray(split.images[i]).save(out / "images" / fname)
            entry = {
                "filename": fname,
                "imgid": len(entries),
                "split": name,
                "sentences": [{"raw": c} for c in caps],
            }
            if classes and "categories" in split.extras:
                entry["category"] = classes[split.extras["categories"][i]]
            entries.append(entry)
    (out / f"dataset_{data.name}.json").write_text(
        json.dumps({"dataset": data.name, "images": entries})
    )
    extras: dict[str, Any] = {}
    extras["negatives"] = {
        name: split.extras["negatives"]
        for name, split in data.splits.items()
        if "negatives" in split.extras
    }
    if data.winoground is not None:
        groups = []
        for g in range(len(data.winoground)):
            files = []
            for k in range(2):
                fname = f"winoground_{g:05d}_{k}.png"
                Image.fromarray(data.winoground.images[g, k]).save(out / "images" / fname)
                files.append(fname)
            groups.append(
                {
                    "images": files,
                    "captions": list(data.winoground.captions[g]),
                    "kind": data.winoground.kinds[g],
                }
            )
        extras["winoground"] = groups
    (out / "extras.json").write_text(json.dumps(extras))
    return out
