"""Real drawings with human-written text: the Open Clip Art Library (dataset ``clipart``).

Debian's ``openclipart-png`` and ``openclipart-svg`` packages hold about 8,000 public-domain
drawings in category folders (``animals/mammals/dogs/bored_dog_01.png``); each SVG carries its
author's title and keywords (Dublin Core metadata). alignfuse installs both packages in its
set-up (``bash scripts/dev setup``; ``apt-get install openclipart-png openclipart-svg``) and
reads them from ``/usr/share/openclipart``, or from any folder with the same ``png/`` +
``svg/`` layout.

Captions (two per drawing, lower-cased):

1. its name: the SVG title, unless that title is a collection's (shared by more than
   ``collection_size`` drawings, e.g. "Lemon SVG theme"), then the file name's words;
2. the name followed by its keywords (``"bored dog: mammal, dog, animal"``), or
   ``"a drawing of <name>"`` for a drawing without keywords.

Splits are a pure function of ``seed``: ``test_unseen`` holds every drawing that carries one
of a set of held-out keywords (drawn among keywords of mid frequency, never a category
name), so that no training caption contains them, as ``test_dk`` does for shapes; the rest is
shuffled into ``test``, ``val`` and ``train``. Each split's ``extras`` hold ``categories``
(the top folder, the class of zero-shot classification), ``paths`` and ``keywords``;
``data.info["classes"]`` lists the categories and ``info["unseen_keywords"]`` the held-out
ones. Decoded images are cached (see :mod:`alignfuse.data.cache`).
"""

from __future__ import annotations

import html
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from alignfuse.data.base import ImageTextData, ImageTextSplit
from alignfuse.data.cache import cached
from alignfuse.errors import DataError
from alignfuse.registry import DATASETS

DEFAULT_ROOT = "/usr/share/openclipart"
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_CREATOR = re.compile(r"<dc:creator>.*?<dc:title>(.*?)</dc:title>", re.S)
_ITEM = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)
# keywords that say nothing about the drawing (tags of the library's import scripts)
MAX_PIXELS = 40_000_000  # a few drawings are rendered at 15,000 x 15,000 pixels
_NOISE = {"", "hash", "magick", "unsorted", "lemon_theme_icon", "theme", "icons", "icon"}


def _clean(text: str) -> str:
    return " ".join(html.unescape(text).replace("_", " ").split()).strip().lower()


def file_words(path: Path) -> str:
    """A drawing's name from its file name: separators to spaces, trailing numbers dropped
    (``bored_dog_01.png`` -> ``bored dog``)."""
    words = re.split(r"[_\-\s.+]+", path.stem.lower())
    while len(words) > 1 and (words[-1].isdigit() or not words[-1]):
        words.pop()
    return " ".join(w for w in words if w)


def read_metadata(svg: Path) -> tuple[str, list[str]]:
    """The title and the keywords (cleaned, in order, without duplicates) of an SVG file;
    ``("", [])`` when it has none."""
    try:
        text = svg.read_text(errors="replace")
    except OSError:
        return "", []
    titles = [_clean(t) for t in _TITLE.findall(text)]
    creator = _CREATOR.search(text)
    title = titles[0] if titles else ""
    if creator and _clean(creator.group(1)) == title:
        title = ""  # the author's name, not the drawing's
    subject = _SUBJECT.search(text)
    keywords: list[str] = []
    for k in _ITEM.findall(subject.group(1)) if subject else []:
        k = _clean(k)
        if k.replace(" ", "_") not in _NOISE and not k.startswith("hash(") and k not in keywords:
            keywords.append(k)
    return title, keywords


def image_size_of(path: Path) -> tuple[int, int] | None:
    """The ``(width, height)`` in a PNG's header, or ``None`` if it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as f:
                return f.size
    except (OSError, Image.DecompressionBombError):
        return None


def scan(
    root: Path, collection_size: int = 20, max_pixels: int | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """Every drawing under ``root/png`` with its category, name and keywords (sorted by
    path), and the paths skipped: unreadable, or larger than ``max_pixels``."""
    pngs = sorted((root / "png").rglob("*.png"))
    if not pngs:
        raise DataError(
            f"clipart: no PNG drawings under {str(root / 'png')!r}; install the Debian packages "
            "openclipart-png and openclipart-svg (bash scripts/dev setup does) or pass root="
        )
    items: list[dict[str, Any]] = []
    skipped: list[str] = []
    for png in pngs:
        rel = png.relative_to(root / "png")
        size = image_size_of(png)
        if size is None or size[0] * size[1] > (max_pixels or MAX_PIXELS):
            skipped.append(str(rel))
            continue
        title, keywords = read_metadata(root / "svg" / rel.with_suffix(".svg"))
        items.append(
            {
                "path": str(rel),
                "category": rel.parts[0] if len(rel.parts) > 1 else "unsorted",
                "title": title,
                "keywords": keywords,
            }
        )
    shared = Counter(it["title"] for it in items)
    for it in items:
        title = it.pop("title")
        it["name"] = (
            title if title and shared[title] <= collection_size else file_words(Path(it["path"]))
        )
    return items, skipped


def captions_of(item: dict[str, Any]) -> list[str]:
    """The two captions of a drawing (its name; its name with its keywords)."""
    name = item["name"]
    extra = [k for k in item["keywords"] if k != name]
    return [name, f"{name}: {', '.join(extra)}" if extra else f"a drawing of {name}"]


def unseen_keywords(
    items: list[dict[str, Any]], target: int, rng: np.random.Generator
) -> list[str]:
    """Held-out keywords: mid-frequency keywords (3 to 40 drawings), never a category name,
    drawn in a seeded order until the drawings carrying them reach ``target``."""
    counts = Counter(k for it in items for k in it["keywords"])
    categories = {it["category"].replace("_", " ") for it in items}
    pool = sorted(k for k, c in counts.items() if 3 <= c <= 40 and k not in categories)
    held: list[str] = []
    covered: set[int] = set()
    for j in rng.permutation(len(pool)):
        if len(covered) >= target:
            break
        k = pool[j]
        held.append(k)
        covered |= {i for i, it in enumerate(items) if _mentions(it, {k})}
    return sorted(held)


def _mentions(item: dict[str, Any], keywords: set[str]) -> bool:
    if keywords & set(item["keywords"]):
        return True
    text = " ".join(captions_of(item))
    return any(re.search(rf"\b{re.escape(k)}\b", text) for k in keywords)


def _decode(path: Path, size: int) -> np.ndarray:
    """A drawing on a white background, letterboxed into a ``size x size`` square."""
    try:
        with Image.open(path) as f:
            im = f.convert("RGBA")
    except OSError as err:
        raise DataError(f"clipart: cannot read image {str(path)!r}: {err}") from None
    canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(canvas, im).convert("RGB")
    scale = size / max(im.size)
    w, h = max(1, round(im.width * scale)), max(1, round(im.height * scale))
    im = im.resize((w, h), Image.Resampling.BICUBIC)
    out = Image.new("RGB", (size, size), (255, 255, 255))
    out.paste(im, ((size - w) // 2, (size - h) // 2))
    return np.asarray(out, dtype=np.uint8)


@DATASETS.register("clipart")
def load_clipart(
    root: str = DEFAULT_ROOT,
    image_size: int = 128,
    n_val: int = 500,
    n_test: int = 1000,
    n_unseen: int = 500,
    seed: int = 0,
    limit: int | None = None,
    collection_size: int = 20,
    cache_dir: str | None = None,
) -> ImageTextData:
    """Open Clip Art drawings with their titles and keywords (real, human-written text).

    Args:
        root: folder with ``png/`` and ``svg/`` (the Debian packages' layout).
        image_size: side of the square images (letterboxed on white).
        n_val, n_test: sizes of the validation and test splits.
        n_unseen: about how many drawings ``test_unseen`` holds (those with a held-out keyword).
        seed: the split's seed.
        limit: use only every k-th drawing so that about ``limit`` remain (a quick subset).
        collection_size: a title shared by more drawings than this names a collection, not
            a drawing; those drawings are named by their file name.
        cache_dir: where decoded images are cached (default ``$ALIGNFUSE_CACHE``).
    """
    base = Path(root)
    if not base.is_dir():
        raise DataError(
            f"clipart: folder {root!r} does not exist; install the Debian packages "
            "openclipart-png and openclipart-svg (bash scripts/dev setup does) or pass root="
        )
    for name, value, low in [
        ("image_size", image_size, 8),
        ("n_val", n_val, 1),
        ("n_test", n_test, 1),
        ("n_unseen", n_unseen, 0),
    ]:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise DataError(f"clipart: {name} must be an integer >= {low}, got {value!r}")
    items, skipped = scan(base, collection_size, MAX_PIXELS)
    if not items:
        raise DataError(
            f"clipart: no drawing left under {root!r} after skipping {len(skipped)} that cannot "
            f"be read or exceed {MAX_PIXELS:,} pixels"
        )
    if skipped:
        warnings.warn(
            f"clipart: skipped {len(skipped)} drawing(s) that cannot be read or exceed "
            f"{MAX_PIXELS:,} pixels, e.g. {skipped[0]}",
            stacklevel=2,
        )
    if limit is not None:
        if limit < 10:
            raise DataError(f"clipart: limit must be >= 10, got {limit}")
        items = items[:: max(1, len(items) // limit)]
    rng = np.random.default_rng(seed)
    held = unseen_keywords(items, n_unseen, rng) if n_unseen else []
    unseen = [i for i, it in enumerate(items) if held and _mentions(it, set(held))]
    rest = np.setdiff1d(np.arange(len(items)), unseen)
    rest = rest[rng.permutation(len(rest))]
    if len(rest) < n_val + n_test + 10:
        raise DataError(
            f"clipart: {len(rest)} drawings outside test_unseen, too few for n_val={n_val} "
            f"and n_test={n_test} plus training"
        )
    order = {
        "train": sorted(rest[n_val + n_test :].tolist()),
        "val": sorted(rest[:n_val].tolist()),
        "test": sorted(rest[n_val : n_val + n_test].tolist()),
    }
    if unseen:
        order["test_unseen"] = unseen
    # images are stored split after split, so each split is a slice of the (memory-mapped)
    # cached array: nothing is decoded into memory after the first run
    flat = [i for idx in order.values() for i in idx]
    listing = [(items[i]["path"], (base / "png" / items[i]["path"]).stat().st_size) for i in flat]
    params = {"listing": listing, "image_size": image_size, "v": 2}

    def generate() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        from alignfuse._progress import Progress, on_terminal

        bar = Progress(len(flat), "clipart: decoding", "img", bar=on_terminal())
        decoded = []
        for i in flat:
            decoded.append(_decode(base / "png" / items[i]["path"], image_size))
            bar.update()
        bar.close()
        images = np.stack(decoded)
        return {"images": images}, {}

    arrays, _, _ = cached("clipart", params, cache_dir, generate)
    images = arrays["images"]
    classes = sorted({it["category"] for it in items})
    splits = {}
    start = 0
    for name, idx in order.items():
        sel = [items[i] for i in idx]
        splits[name] = ImageTextSplit(
            name,
            images[start : start + len(idx)],
            [captions_of(it) for it in sel],
            {
                "categories": [classes.index(it["category"]) for it in sel],
                "paths": [it["path"] for it in sel],
                "keywords": [it["keywords"] for it in sel],
            },
        )
        start += len(idx)
    info = {"root": str(base), "classes": classes, "unseen_keywords": held, "skipped": skipped}
    return ImageTextData("clipart", splits, None, info)
