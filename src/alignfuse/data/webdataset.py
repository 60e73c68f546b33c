"""Image-caption data in the WebDataset format (tar shards), and export to it.

A shard is a POSIX tar file; a sample is the group of consecutive members that share a key,
the member's path up to the first dot of its file name (``shard-0/000123.jpg`` and
``shard-0/000123.txt`` are sample ``shard-0/000123``, with extensions ``jpg`` and ``txt``),
as the ``webdataset`` library groups them (the tests read and write shards with it):

* the image: ``jpg``, ``jpeg``, ``png``, ``webp``, ``bmp``, ``gif``, ``tif`` or ``tiff``;
* the captions: ``txt`` (one caption per non-empty line) or else ``json`` with
  ``"captions": [...]`` or ``"caption": "..."``.

Shard lists are written as in the library, with brace ranges and alternatives:
``"data/train-{000000..000031}.tar"``, ``"{a,b}.tar"``. Members are read as bytes and never
extracted to disk. Samples load into memory (the engine trains from memory): fine for up to
some hundred thousand small images, not for web-scale streaming.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alignfuse.data.base import ImageTextData, ImageTextSplit
from alignfuse.errors import DataError
from alignfuse.registry import DATASETS

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_shards(pattern: str | Sequence[str]) -> list[str]:
    """Expand brace ranges ``{000..012}`` (zero padding kept) and alternatives ``{a,b}``.

    Example:
        >>> expand_shards("s-{08..10}.tar")
        ['s-08.tar', 's-09.tar', 's-10.tar']
        >>> expand_shards(["x{a,b}.tar", "y.tar"])
        ['xa.tar', 'xb.tar', 'y.tar']
    """
    if not isinstance(pattern, str):
        if not isinstance(pattern, Sequence) or not all(isinstance(p, str) for p in pattern):
            raise DataError(
                f"a shard pattern must be a string or a list of strings, got {pattern!r}"
            )
        return [s for p in pattern for s in expand_shards(p)]
    m = _BRACE.search(pattern)
    if m is None:
        if "{" in pattern or "}" in pattern:
            raise DataError(f"shard pattern {pattern!r} has an unbalanced brace")
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.group(1), rng.group(2)
        if int(hi) < int(lo):
            raise DataError(f"shard pattern {pattern!r}: range {body} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        raise DataError(f"shard pattern {pattern!r}: {{{body}}} is neither a..b nor a,b,...")
    head, tail = pattern[: m.start()], pattern[m.end() :]
    return [s for o in options for s in expand_shards(head + o + tail)]


def _split_name(member: str) -> tuple[str, str]:
    """``(key, extension)`` of a member path, as the webdataset library splits it."""
    folder, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot:
        return member, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def _samples(shard: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples of one shard, in order: ``(key, {extension: bytes})``."""
    path = Path(shard)
    if not path.is_file():
        raise DataError(f"webdataset: shard {shard!r} does not exist")
    try:
        with tarfile.open(path, mode="r:*") as tar:
            key: str | None = None
            files: dict[str, bytes] = {}
            for member in tar:
                if not member.isfile():
                    continue  # directories, links: never followed
                k, ext = _split_name(member.name)
                if k.startswith("__") or not ext:
                    continue
                if k != key:
                    if key is not None:
                        yield key, files
                    key, files = k, {}
                handle = tar.extractfile(member)
                files[ext] = handle.read() if handle is not None else b""
            if key is not None:
                yield key, files
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"webdataset: shard {shard!r} is not a readable tar file: {err}") from None


def _captions(files: dict[str, bytes], where: str) -> list[str]:
    if "txt" in files:
        try:
            caps = [ln.strip() for ln in files["txt"].decode("utf-8").splitlines() if ln.strip()]
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: .txt is not UTF-8 text: {err}") from None
    elif "json" in files:
        try:
            meta = json.loads(files["json"])
        except ValueError as err:
            raise DataError(f"{where}: .json is not valid JSON: {err}") from None
        raw = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
        listed = [raw] if isinstance(raw, str) else raw
        if not isinstance(listed, list) or not all(isinstance(c, str) for c in listed):
            raise DataError(f'{where}: .json needs "captions": [strings] or "caption": string')
        caps = [c.strip() for c in listed if c.strip()]
    else:
        raise DataError(f"{where}: no caption (.txt or .json); it has {sorted(files)}")
    if not caps:
        raise DataError(f"{where}: the caption is empty")
    return caps


def _image(files: dict[str, bytes], where: str, image_size: int | None) -> np.ndarray:
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if ext is None:
        raise DataError(
            f"{where}: no image ({', '.join(IMAGE_EXTENSIONS)}); it has {sorted(files)}"
        )
    try:
        with Image.open(io.BytesIO(files[ext])) as f:
            im = f.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"{where}: cannot decode .{ext} image: {err}") from None
    if image_size is not None and im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8).copy()


def read_split(
    name: str, shards: str | Sequence[str], image_size: int | None = None
) -> ImageTextSplit:
    """One split from its shards (in the order given, members in tar order)."""
    paths = expand_shards(shards)
    if not paths:
        raise DataError(f"webdataset: split {name!r} names no shard")
    images, captions, keys = [], [], []
    seen: dict[str, str] = {}
    for shard in paths:
        for key, files in _samples(shard):
            where = f"webdataset: sample {key!r} of {shard!r}"
            if key in seen:
                raise DataError(f"{where}: key also used in {seen[key]!r}")
            seen[key] = shard
            images.append(_image(files, where, image_size))
            captions.append(_captions(files, where))
            keys.append(key)
    if not images:
        raise DataError(f"webdataset: the shards of split {name!r} hold no sample")
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        raise DataError(
            f"webdataset: split {name!r}: images differ in size {sorted(sizes)[:3]}; "
            "pass image_size="
        )
    return ImageTextSplit(name, np.stack(images), captions, {"keys": keys})


@DATASETS.register("webdataset")
def load_webdataset(
    splits: dict[str, Any] | None = None, image_size: int | None = None, name: str = "webdataset"
) -> ImageTextData:
    """Image-caption data from WebDataset tar shards, one shard list per split.

    Args:
        splits: split name to shard pattern (or list of patterns), e.g.
            ``{"train": "data/train-{0000..0009}.tar", "test": "data/test-0000.tar"}``.
        image_size: resize every image to ``image_size x image_size`` (default: keep; the
            images of a split must then share one size).
        name: the dataset's name in reports.

    Example (YAML)::

        data: {name: webdataset, args: {splits: {train: "shards/train-{000..009}.tar",
                                                 test: "shards/test-000.tar"}, image_size: 64}}
    """
    if image_size is not None and (isinstance(image_size, bool) or int(image_size) < 1):
        raise DataError(f"webdataset: image_size must be a positive integer, got {image_size!r}")
    if not isinstance(splits, dict) or not splits:
        raise DataError(
            "webdataset: pass splits={name: shard pattern}, e.g. "
            '{"train": "shards/train-{0000..0009}.tar"}'
        )
    out = {}
    for split, shards in splits.items():
        if not isinstance(shards, str) and not (
            isinstance(shards, Sequence) and all(isinstance(s, str) for s in shards)
        ):
            raise DataError(f"webdataset: split {split!r} must name a shard pattern or a list")
        out[str(split)] = read_split(str(split), shards, image_size)
    return ImageTextData(name, out, None, {"splits": {k: str(v) for k, v in splits.items()}})


def export_webdataset(data: ImageTextData, out: str | Path, shard_size: int = 1000) -> list[Path]:
    """Write every split as shards ``<split>-000000.tar``, ... of ``shard_size`` samples:
    ``<key>.png`` and ``<key>.json`` (``{"captions": [...]}``). Returns the shard paths.

    Written with the standard ``tarfile`` module (POSIX ustar members, sorted, no
    timestamps), so the same data gives byte-identical shards."""
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for name, split in data.splits.items():
        for first in range(0, len(split), shard_size):
            path = root / f"{name}-{first // shard_size:06d}.tar"
            tmp = path.with_suffix(".tar.tmp")
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for i in range(first, min(first + shard_size, len(split))):
                    key = f"{name}_{i:08d}"
                    png = io.BytesIO()
                    Image.fromarray(split.images[i]).save(png, format="PNG")
                    meta = json.dumps({"captions": split.captions[i]}).encode()
                    for ext, blob in (("json", meta), ("png", png.getvalue())):
                        info = tarfile.TarInfo(f"{key}.{ext}")
                        info.size, info.mode, info.mtime = len(blob), 0o644, 0
                        tar.addfile(info, io.BytesIO(blob))
            tmp.replace(path)
            written.append(path)
    return written
