"""Precomputed image features with captions, in the layout SCAN and VSE++ release
(dataset ``precomputed``)::

    f30k_precomp/
        train_ims.npy    (N, R, D) or (N, D) float features, one row per image
        train_caps.txt   k captions per image, one per line, image by image
        dev_ims.npy      dev_caps.txt     (split ``val``)
        test_ims.npy     test_caps.txt

The feature files are memory-mapped (``np.load(mmap_mode="r")``, never unpickled): batches
read their rows from disk, so a split larger than memory trains. ``k`` is the number of
caption lines divided by the number of images and must be a whole number (5 in the
releases). Train on them with ``image_encoder: precomputed`` and ``image_args: {dim: D}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alignfuse.data.base import ImageTextData, ImageTextSplit
from alignfuse.errors import DataError
from alignfuse.registry import DATASETS

SPLIT_FILES = {"train": "train", "val": "dev", "test": "test", "testall": "testall"}


def _read_split(root: Path, stem: str, name: str) -> ImageTextSplit:
    ims, caps = root / f"{stem}_ims.npy", root / f"{stem}_caps.txt"
    if not caps.is_file():
        raise DataError(f"precomputed: {str(ims)!r} has no captions file {caps.name}")
    try:
        features = np.load(ims, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise DataError(
            f"precomputed: cannot read {str(ims)!r} without unpickling: {err}"
        ) from None
    if features.ndim not in (2, 3) or not np.issubdtype(features.dtype, np.floating):
        raise DataError(
            f"precomputed: {ims.name} must hold float features (N, R, D) or (N, D), got "
            f"{features.dtype} {tuple(features.shape)}"
        )
    lines = [line.strip() for line in caps.read_text(encoding="utf-8").splitlines()]
    n = len(features)
    if n == 0 or len(lines) % n:
        raise DataError(
            f"precomputed: {caps.name} has {len(lines)} lines for {n} images in {ims.name}; "
            "expected the same number of captions per image"
        )
    k = len(lines) // n
    empty = [i for i, line in enumerate(lines) if not line]
    if empty:
        raise DataError(f"precomputed: {caps.name} line {empty[0] + 1} is empty")
    captions = [lines[i * k : (i + 1) * k] for i in range(n)]
    return ImageTextSplit(name, features, captions, {"features_file": str(ims)})


@DATASETS.register("precomputed")
def load_precomputed(root: str) -> ImageTextData:
    """Precomputed image features + captions in SCAN / VSE++'s ``*_ims.npy`` /
    ``*_caps.txt`` layout (``dev`` becomes split ``val``), memory-mapped."""
    base = Path(root)
    if not base.is_dir():
        raise DataError(f"precomputed: folder {root!r} does not exist")
    splits = {
        name: _read_split(base, stem, name)
        for name, stem in SPLIT_FILES.items()
        if (base / f"{stem}_ims.npy").is_file()
    }
    if not splits:
        raise DataError(
            f"precomputed: {root!r} holds no <split>_ims.npy (train_ims.npy, dev_ims.npy, "
            "test_ims.npy)"
        )
    dims = {s.images.shape[-1] for s in splits.values()}
    if len(dims) > 1:
        raise DataError(f"precomputed: the splits' feature sizes differ: {sorted(dims)}")
    return ImageTextData(base.name, splits, None, {"root": str(base), "dim": dims.pop()})
