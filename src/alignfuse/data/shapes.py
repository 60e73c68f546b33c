"""``shapes``: a built-in compositional image-text dataset, generated locally.

Each image (default 64x64 RGB) shows 1 to 4 objects drawn from 6 shapes, 8 colours and 2
sizes at free, non-overlapping positions. Each image has 5 captions of different kinds:

* ``list``: every object with its attributes ("a large red circle and a small blue star");
* ``rel``: a spatial relation between two objects ("a red circle to the left of a blue star");
  images with a single object get ``only`` ("only one object: a large red circle");
* ``count``: objects counted per shape ("two circles and one star");
* ``single``: one object and the number of objects ("a small blue star among three objects");
* ``colorcount``: objects counted per colour ("two red objects and one blue object").

Every caption carries a *fact*: a hashable meaning that can be checked against any scene,
so the ambiguity of a split (how many images a caption truly describes) is exact. Per caption
the phrase spans that refer to objects are stored (grounding), per image 3 question/answer
pairs, per test image a minimally edited hard-negative caption, and Winoground-style groups
of two images and two captions with the same words in another order.

The ``test_dk`` split holds the test images with captions that say the same thing in words
and phrasings that never occur in training captions ("crimson" for red, "disk" for circle,
"west of" for "to the left of", digits for number words): only the function words in
:data:`FUNCTION_WORDS` are shared.

Everything is deterministic from ``seed`` whatever the number of worker processes, and is
cached on disk with a manifest of SHA-256 checksums.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from alignfuse.data.base import ImageTextData, ImageTextSplit, WinogroundSet
from alignfuse.data.cache import cached
from alignfuse.errors import DataError
from alignfuse.registry import DATASETS

VERSION = 2
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 170, 55),
    "blue": (45, 85, 235),
    "yellow": (235, 215, 30),
    "purple": (145, 50, 200),
    "orange": (245, 135, 25),
    "cyan": (40, 215, 225),
    "white": (240, 240, 240),
}
SIZES: dict[str, float] = {"small": 0.09, "large": 0.16}  # radius as a fraction of the side
RELATIONS = ("left", "right", "above", "below")
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
N_OBJECTS_P = (0.15, 0.25, 0.30, 0.30)  # probabilities of 1, 2, 3, 4 objects
FUNCTION_WORDS = frozenset({"a", "an", "and", "the", "of"})
SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "winoground": 3}
CHUNK = 250


@dataclass(frozen=True)
class Lexicon:
    """The words a caption is realised with. ``TRAIN`` for train/val/test, ``DK`` for test_dk."""

    colors: dict[str, str]
    shapes: dict[str, tuple[str, str]]  # singular, plural
    sizes: dict[str, str]
    relations: dict[str, str]
    numbers: dict[int, str]
    object_word: tuple[str, str]
    list_templates: tuple[str, ...]
    rel_templates: tuple[str, ...]
    only_templates: tuple[str, ...]
    count_templates: tuple[str, ...]
    single_templates: tuple[str, ...]
    single_alone: tuple[str, ...]
    colorcount_templates: tuple[str, ...]


TRAIN = Lexicon(
    colors={c: c for c in COLORS},
    shapes={
        "circle": ("circle", "circles"),
        "square": ("square", "squares"),
        "triangle": ("triangle", "triangles"),
        "diamond": ("diamond", "diamonds"),
        "star": ("star", "stars"),
        "cross": ("cross", "crosses"),
    },
    sizes={"small": "small", "large": "large"},
    relations={
        "left": "to the left of",
        "right": "to the right of",
        "above": "above",
        "below": "below",
    },
    numbers={1: "one", 2: "two", 3: "three", 4: "four"},
    object_word=("object", "objects"),
    list_templates=("{x}", "there is {x}", "an image with {x}", "this picture shows {x}"),
    rel_templates=("{x}", "there is {x}", "in this image {x}"),
    only_templates=("only one object: {x}", "a single {x}", "just {x} by itself"),
    count_templates=("{x}", "there are {x}", "exactly {x}", "the image has {x}"),
    single_templates=("{x} among {n} objects", "{n} objects including {x}"),
    single_alone=("{x} on its own", "{x} alone"),
    colorcount_templates=("{x}", "a scene containing {x}", "in total {x}"),
)

DK = Lexicon(
    colors={
        "red": "crimson",
        "green": "emerald",
        "blue": "azure",
        "yellow": "golden",
        "purple": "violet",
        "orange": "amber",
        "cyan": "turquoise",
        "white": "ivory",
    },
    shapes={
        "circle": ("disk", "disks"),
        "square": ("box", "boxes"),
        "triangle": ("wedge", "wedges"),
        "diamond": ("rhombus", "rhombi"),
        "star": ("pentagram", "pentagrams"),
        "cross": ("plus", "pluses"),
    },
    sizes={"small": "tiny", "large": "huge"},
    relations={"left": "west of", "right": "east of", "above": "over", "below": "beneath"},
    numbers={1: "1", 2: "2", 3: "3", 4: "4"},
    object_word=("item", "items"),
    list_templates=("{x}", "we see {x}", "a photo featuring {x}", "depicted: {x}"),
    rel_templates=("{x}", "we see {x}", "somewhere {x}"),
    only_templates=("solely {x}", "merely {x}", "nothing but {x}"),
    count_templates=("{x}", "we count {x}", "precisely {x}", "visible: {x}"),
    single_templates=("{x} amid {n} items", "{n} items incl. {x}"),
    single_alone=("{x}, solitary", "{x} standing solo"),
    colorcount_templates=("{x}", "a photo holding {x}", "altogether {x}"),
)


# --------------------------------------------------------------------------- scenes


def _sample_scene(rng: np.random.Generator, size: int) -> list[dict[str, Any]]:
    n = int(rng.choice(4, p=N_OBJECTS_P)) + 1
    while True:
        objs: list[dict[str, Any]] = []
        for _ in range(n):
            sz = str(rng.choice(list(SIZES)))
            r = SIZES[sz] * size
            for _try in range(60):
                x = float(rng.uniform(r + 1, size - r - 1))
                y = float(rng.uniform(r + 1, size - r - 1))
                if all(np.hypot(x - o["x"], y - o["y"]) > r + o["r"] + 2 for o in objs):
                    objs.append(
                        {
                            "shape": str(rng.choice(SHAPES)),
                            "color": str(rng.choice(list(COLORS))),
                            "size": sz,
                            "x": round(x, 3),
                            "y": round(y, 3),
                            "r": round(r, 3),
                        }
                    )
                    break
        if len(objs) == n:
            for o in objs:
                o["box"] = [
                    round(o["x"] - o["r"], 2),
                    round(o["y"] - o["r"], 2),
                    round(o["x"] + o["r"], 2),
                    round(o["y"] + o["r"], 2),
                ]
            return objs


def _polygon(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.82
        return [(x - h, y - h), (x + h, y - h), (x + h, y + h), (x - h, y + h)]
    if shape == "triangle":
        return [
            (x + r * np.cos(a), y + r * np.sin(a))
            for a in (-np.pi / 2, -np.pi / 2 + 2 * np.pi / 3, -np.pi / 2 + 4 * np.pi / 3)
        ]
    if shape == "diamond":
        return [(x, y - r), (x + r * 0.8, y), (x, y + r), (x - r * 0.8, y)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.42
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((x + rad * np.cos(a), y + rad * np.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.33
        return [
            (x - w, y - r),
            (x + w, y - r),
            (x + w, y - w),
            (x + r, y - w),
            (x + r, y + w),
            (x + w, y + w),
            (x + w, y + r),
            (x - w, y + r),
            (x - w, y + w),
            (x - r, y + w),
            (x - r, y - w),
            (x - w, y - w),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def render_scene(objs: Sequence[dict[str, Any]], size: int, noise_seed: int) -> np.ndarray:
    """Render a scene to a ``(size, size, 3)`` uint8 image (4x supersampled, light noise)."""
    ss = 4
    img = Image.new("RGB", (size * ss, size * ss), (28, 28, 32))
    draw = ImageDraw.Draw(img)
    for o in objs:
        x, y, r = o["x"] * ss, o["y"] * ss, o["r"] * ss
        color = COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
        else:
            draw.polygon(_polygon(o["shape"], x, y, r), fill=color)
    small = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.int16)
    noise = np.random.default_rng(noise_seed).normal(0.0, 4.0, small.shape)
    return np.clip(small + np.round(noise), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- facts


def _obj_key(o: dict[str, Any]) -> tuple[str, str, str]:
    return (o["size"], o["color"], o["shape"])


def _rel(a: dict[str, Any], b: dict[str, Any], axis: str) -> str:
    if axis == "h":
        return "left" if a["x"] < b["x"] else "right"
    return "above" if a["y"] < b["y"] else "below"


def scene_facts(objs: Sequence[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """Every caption fact that is true of a scene."""
    n = len(objs)
    facts: set[tuple[Any, ...]] = {
        ("list", tuple(sorted(_obj_key(o) for o in objs))),
        ("count", tuple(sorted(Counter(o["shape"] for o in objs).items()))),
        ("colorcount", tuple(sorted(Counter(o["color"] for o in objs).items()))),
    }
    for o in objs:
        facts.add(("single", *_obj_key(o), n))
    for i, a in enumerate(objs):
        for j, b in enumerate(objs):
            if i != j:
                for axis in ("h", "v"):
                    facts.add(
                        ("rel", a["color"], a["shape"], _rel(a, b, axis), b["color"], b["shape"])
                    )
    return facts


# --------------------------------------------------------------------------- captions


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _Builder:
    """Concatenates caption pieces while recording which span refers to which objects."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[list[Any]] = []

    def add(self, piece: str, objects: list[int] | None = None) -> None:
        start = len(self.text)
        self.text += piece
        if objects is not None:
            self.spans.append([start, len(self.text), objects])


def _obj_phrase(lex: Lexicon, o: dict[str, Any], with_size: bool = True) -> str:
    words = ([lex.sizes[o["size"]]] if with_size else []) + [
        lex.colors[o["color"]],
        lex.shapes[o["shape"]][0],
    ]
    return f"{_article(words[0])} {' '.join(words)}"


def _join(b: _Builder, items: list[tuple[str, list[int]]]) -> None:
    for k, (phrase, objs) in enumerate(items):
        if k > 0:
            b.add(" and " if k == len(items) - 1 else ", ")
        b.add(phrase, objs)


def _fill(template: str, b: _Builder, body: _Builder, n: str = "") -> _Builder:
    """Place ``body`` (with its spans) where ``{x}`` stands in ``template``."""
    pre, post = template.split("{x}")
    pre, post = pre.replace("{n}", n), post.replace("{n}", n)
    out = _Builder()
    out.add(pre)
    offset = len(out.text)
    out.text += body.text
    out.spans.extend([[s + offset, e + offset, o] for s, e, o in body.spans])
    out.add(post)
    return out


def _count_phrase(lex: Lexicon, k: int, word: tuple[str, str]) -> str:
    return f"{lex.numbers[k]} {word[0] if k == 1 else word[1]}"


def realise(plan: dict[str, Any], objs: Sequence[dict[str, Any]], lex: Lexicon) -> _Builder:
    """Turn a caption plan (kind, choices) into text with a lexicon."""
    kind, t = plan["kind"], plan["template"]
    body = _Builder()
    if kind == "list":
        _join(body, [(_obj_phrase(lex, objs[i]), [i]) for i in plan["order"]])
        return _fill(lex.list_templates[t], body, body)
    if kind == "only":
        body.add(_obj_phrase(lex, objs[0]), [0])
        return _fill(lex.only_templates[t], body, body)
    if kind == "rel":
        a, b = plan["pair"]
        body.add(_obj_phrase(lex, objs[a], with_size=False), [a])
        body.add(f" {lex.relations[plan['relation']]} ")
        body.add(_obj_phrase(lex, objs[b], with_size=False), [b])
        return _fill(lex.rel_templates[t], body, body)
    if kind == "count":
        items = [
            (
                _count_phrase(lex, k, lex.shapes[s]),
                [i for i, o in enumerate(objs) if o["shape"] == s],
            )
            for s, k in plan["counts"]
        ]
        _join(body, items)
        return _fill(lex.count_templates[t], body, body)
    if kind == "colorcount":
        items = [
            (
                f"{lex.numbers[k]} {lex.colors[c]} "
                f"{lex.object_word[0] if k == 1 else lex.object_word[1]}",
                [i for i, o in enumerate(objs) if o["color"] == c],
            )
            for c, k in plan["counts"]
        ]
        _join(body, items)
        return _fill(lex.colorcount_templates[t], body, body)
    if kind == "single":
        i, n = plan["object"], len(objs)
        body.add(_obj_phrase(lex, objs[i]), [i])
        templates = lex.single_alone if n == 1 else lex.single_templates
        return _fill(templates[t % len(templates)], body, body, n=lex.numbers[n])
    raise ValueError(f"unknown caption kind {kind!r}")


def plan_fact(plan: dict[str, Any], objs: Sequence[dict[str, Any]]) -> tuple[Any, ...]:
    """The meaning of a caption plan, comparable with :func:`scene_facts`."""
    kind = plan["kind"]
    if kind in ("list", "only"):
        return ("list", tuple(sorted(_obj_key(o) for o in objs)))
    if kind == "rel":
        a, b = plan["pair"]
        oa, ob = objs[a], objs[b]
        return ("rel", oa["color"], oa["shape"], plan["relation"], ob["color"], ob["shape"])
    if kind == "count":
        return ("count", tuple(sorted((s, k) for s, k in plan["counts"])))
    if kind == "colorcount":
        return ("colorcount", tuple(sorted((c, k) for c, k in plan["counts"])))
    if kind == "single":
        return ("single", *_obj_key(objs[plan["object"]]), len(objs))
    raise ValueError(kind)


def _plans(
    rng: np.random.Generator, objs: Sequence[dict[str, Any]], size: int
) -> list[dict[str, Any]]:
    n = len(objs)
    order = [int(i) for i in rng.permutation(n)]
    plans: list[dict[str, Any]] = [
        {"kind": "list", "template": int(rng.integers(len(TRAIN.list_templates))), "order": order}
    ]
    if n == 1:
        plans.append({"kind": "only", "template": int(rng.integers(len(TRAIN.only_templates)))})
    else:
        margin = 0.12 * size
        cands = []
        for i in range(n):
            for j in range(n):
                if i == j:
                    continue
                dx, dy = objs[j]["x"] - objs[i]["x"], objs[j]["y"] - objs[i]["y"]
                if abs(dx) >= margin:
                    cands.append((i, j, "h"))
                if abs(dy) >= margin:
                    cands.append((i, j, "v"))
        if not cands:  # objects too close on both axes: use the dominant axis
            i, j = 0, 1
            dx, dy = objs[j]["x"] - objs[i]["x"], objs[j]["y"] - objs[i]["y"]
            cands = [(i, j, "h" if abs(dx) >= abs(dy) else "v")]
        i, j, axis = cands[int(rng.integers(len(cands)))]
        plans.append(
            {
                "kind": "rel",
                "template": int(rng.integers(len(TRAIN.rel_templates))),
                "pair": [i, j],
                "relation": _rel(objs[i], objs[j], axis),
            }
        )
    shape_counts = Counter(objs[i]["shape"] for i in order)
    plans.append(
        {
            "kind": "count",
            "template": int(rng.integers(len(TRAIN.count_templates))),
            "counts": [[s, k] for s, k in shape_counts.items()],
        }
    )
    plans.append(
        {
            "kind": "single",
            "template": int(rng.integers(2)),
            "object": int(rng.integers(n)),
        }
    )
    color_counts = Counter(objs[i]["color"] for i in order)
    plans.append(
        {
            "kind": "colorcount",
            "template": int(rng.integers(len(TRAIN.colorcount_templates))),
            "counts": [[c, k] for c, k in color_counts.items()],
        }
    )
    return plans


def _hard_negative(
    rng: np.random.Generator, objs: Sequence[dict[str, Any]], plans: list[dict[str, Any]]
) -> dict[str, Any]:
    """A minimal edit of one caption that makes it false for the scene."""
    facts = scene_facts(objs)
    kinds = ["attribute", "count"] + (["relation"] if plans[1]["kind"] == "rel" else [])
    for kind in [str(k) for k in rng.permutation(kinds)] + ["attribute"]:
        if kind == "relation":
            plan = dict(plans[1], relation=OPPOSITE[plans[1]["relation"]])
            index = 1
        elif kind == "count":
            counts = [list(c) for c in plans[2]["counts"]]
            k = int(rng.integers(len(counts)))
            old = counts[k][1]
            counts[k][1] = old + 1 if old < 4 else old - 1
            if counts[k][1] == 0 or sum(c[1] for c in counts) > 4:
                counts[k][1] = old - 1 if old > 1 else old
            if counts[k][1] == old:
                continue
            plan = dict(plans[2], counts=counts)
            index = 2
            fake = [dict(shape=s, color="red", size="small") for s, c in counts for _ in range(c)]
            if ("count", tuple(sorted(Counter(o["shape"] for o in fake).items()))) in facts:
                continue
            return {"plan": plan, "positive": index, "kind": kind}
        else:
            i = int(rng.integers(len(objs)))
            attr = str(rng.choice(["color", "shape", "size"]))
            pool = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES)}[attr]
            new = str(rng.choice([v for v in pool if v != objs[i][attr]]))
            edited = [dict(o) for o in objs]
            edited[i][attr] = new
            plan = plans[0]
            index = 0
            return {"plan": plan, "positive": index, "kind": kind, "edited": edited}
        if plan_fact(plan, objs) not in facts:
            return {"plan": plan, "positive": index, "kind": kind}
    raise AssertionError("unreachable")  # pragma: no cover


def _questions(rng: np.random.Generator, objs: Sequence[dict[str, Any]]) -> list[list[str]]:
    qa: list[list[str]] = []
    shapes = Counter(o["shape"] for o in objs)
    unique = [s for s, k in shapes.items() if k == 1]
    if unique:
        s = str(rng.choice(unique))
        color = next(o["color"] for o in objs if o["shape"] == s)
        qa.append([f"what color is the {s}?", color])
    s = str(rng.choice(SHAPES))
    qa.append([f"how many {TRAIN.shapes[s][1]} are there?", str(shapes.get(s, 0))])
    if rng.random() < 0.5:
        o = objs[int(rng.integers(len(objs)))]
        c, s = o["color"], o["shape"]
    else:
        c, s = str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))
    present = any(o["color"] == c and o["shape"] == s for o in objs)
    qa.append([f"is there {_article(c)} {c} {s}?", "yes" if present else "no"])
    return qa


# --------------------------------------------------------------------------- generation


def _chunk_seed(seed: int, split: str, chunk: int) -> list[int]:
    return [seed, SPLIT_CODES[split], chunk]


def _generate_chunk(args: tuple[int, str, int, int, int]) -> dict[str, Any]:
    seed, split, chunk, count, size = args
    rng = np.random.default_rng(_chunk_seed(seed, split, chunk))
    images = np.empty((count, size, size, 3), np.uint8)
    out: dict[str, list[Any]] = {k: [] for k in ("scenes", "plans", "questions", "negatives")}
    for k in range(count):
        objs = _sample_scene(rng, size)
        images[k] = render_scene(objs, size, int(rng.integers(2**31)))
        plans = _plans(rng, objs, size)
        out["scenes"].append(objs)
        out["plans"].append(plans)
        out["questions"].append(_questions(rng, objs))
        if split == "test":
            out["negatives"].append(_hard_negative(rng, objs, plans))
    return {"images": images, **out}


def _winoground_chunk(args: tuple[int, str, int, int, int]) -> dict[str, Any]:
    seed, split, chunk, count, size = args
    rng = np.random.default_rng(_chunk_seed(seed, split, chunk))
    images = np.empty((count, 2, size, size, 3), np.uint8)
    captions, kinds = [], []
    for g in range(count):
        sz = str(rng.choice(list(SIZES)))
        r = SIZES[sz] * size
        ca, cb = (str(c) for c in rng.choice(list(COLORS), 2, replace=False))
        sa, sb = (str(s) for s in rng.choice(SHAPES, 2, replace=False))
        axis = str(rng.choice(["h", "v"]))
        lo, hi = r + 1, size - r - 1
        p1 = float(rng.uniform(lo, lo + 0.25 * (hi - lo)))
        p2 = float(rng.uniform(hi - 0.25 * (hi - lo), hi))
        q1, q2 = (float(v) for v in rng.uniform(lo, hi, 2))
        pos_a, pos_b = ((p1, q1), (p2, q2)) if axis == "h" else ((q1, p1), (q2, p2))
        rel = "left" if axis == "h" else "above"
        kind = str(rng.choice(["object", "attribute"]))

        def obj(
            shape: str, color: str, pos: tuple[float, float], sz: str = sz, r: float = r
        ) -> dict[str, Any]:
            return {"shape": shape, "color": color, "size": sz, "x": pos[0], "y": pos[1], "r": r}

        img0 = [obj(sa, ca, pos_a), obj(sb, cb, pos_b)]
        if kind == "object":  # the two objects trade places
            img1 = [obj(sa, ca, pos_b), obj(sb, cb, pos_a)]
            cap0 = f"{_article(ca)} {ca} {sa} {TRAIN.relations[rel]} {_article(cb)} {cb} {sb}"
            cap1 = f"{_article(cb)} {cb} {sb} {TRAIN.relations[rel]} {_article(ca)} {ca} {sa}"
        else:  # the two objects trade colours
            img1 = [obj(sa, cb, pos_a), obj(sb, ca, pos_b)]
            cap0 = f"{_article(ca)} {ca} {sa} {TRAIN.relations[rel]} {_article(cb)} {cb} {sb}"
            cap1 = f"{_article(cb)} {cb} {sa} {TRAIN.relations[rel]} {_article(ca)} {ca} {sb}"
        images[g, 0] = render_scene(img0, size, int(rng.integers(2**31)))
        images[g, 1] = render_scene(img1, size, int(rng.integers(2**31)))
        captions.append([cap0, cap1])
        kinds.append(kind)
    return {"images": images, "captions": captions, "kinds": kinds}


def _run_chunks(
    fn: Any, seed: int, split: str, n: int, size: int, workers: int
) -> list[dict[str, Any]]:
    jobs = [
        (seed, split, c, min(CHUNK, n - c * CHUNK), size) for c in range((n + CHUNK - 1) // CHUNK)
    ]
    if workers <= 1 or len(jobs) <= 1:
        return [fn(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, jobs))


def _realise_split(
    name: str, images: np.ndarray, ann: dict[str, Any], lex: Lexicon
) -> ImageTextSplit:
    captions, grounding, facts = [], [], []
    for objs, plans in zip(ann["scenes"], ann["plans"], strict=True):
        built = [realise(p, objs, lex) for p in plans]
        captions.append([b.text for b in built])
        grounding.append([b.spans for b in built])
        facts.append([plan_fact(p, objs) for p in plans])
    extras: dict[str, Any] = {
        "scenes": ann["scenes"],
        "grounding": grounding,
        "facts": facts,
        "questions": ann["questions"],
    }
    if ann.get("negatives"):
        negs = []
        for objs, neg in zip(ann["scenes"], ann["negatives"], strict=True):
            src = neg.get("edited", objs)
            negs.append(
                {
                    "caption": realise(neg["plan"], src, lex).text,
                    "positive": neg["positive"],
                    "kind": neg["kind"],
                }
            )
        extras["negatives"] = negs
    return ImageTextSplit(name, images, captions, extras)


def generate_shapes(
    n_train: int = 10_000,
    n_val: int = 1_000,
    n_test: int = 1_000,
    n_winoground: int = 200,
    image_size: int = 64,
    seed: int = 0,
    workers: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Generate the raw images and annotations (no caching). See :func:`load_shapes`."""
    for arg, val, low in (
        ("n_train", n_train, 1),
        ("n_val", n_val, 1),
        ("n_test", n_test, 1),
        ("n_winoground", n_winoground, 0),
        ("image_size", image_size, 32),
    ):
        if isinstance(val, bool) or not isinstance(val, int) or val < low:
            raise DataError(f"shapes: {arg} must be an integer >= {low}, got {val!r}")
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    from alignfuse._progress import Progress, on_terminal

    images: dict[str, np.ndarray] = {}
    ann: dict[str, Any] = {}
    total = n_train + n_val + n_test + n_winoground
    bar = Progress(total, "shapes: generating", "img", bar=on_terminal(), every=5.0)
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        parts = _run_chunks(_generate_chunk, seed, split, n, image_size, workers)
        bar.update(n)
        images[split] = np.concatenate([p["images"] for p in parts])
        ann[split] = {
            k: [x for p in parts for x in p[k]]
            for k in ("scenes", "plans", "questions", "negatives")
        }
    if n_winoground:
        parts = _run_chunks(
            _winoground_chunk, seed, "winoground", n_winoground, image_size, workers
        )
        images["winoground"] = np.concatenate([p["images"] for p in parts])
        ann["winoground"] = {
            "captions": [c for p in parts for c in p["captions"]],
            "kinds": [k for p in parts for k in p["kinds"]],
        }
        bar.update(n_winoground)
    bar.close()
    return images, ann


def _assemble(
    images: dict[str, np.ndarray], ann: dict[str, Any], params: dict[str, Any]
) -> ImageTextData:
    splits = {s: _realise_split(s, images[s], ann[s], TRAIN) for s in ("train", "val", "test")}
    splits["test_dk"] = _realise_split("test_dk", images["test"], ann["test"], DK)
    wino = None
    if "winoground" in images:
        wino = WinogroundSet(
            images["winoground"],
            [tuple(c) for c in ann["winoground"]["captions"]],  # type: ignore[misc]
            ann["winoground"]["kinds"],
        )
    return ImageTextData("shapes", splits, wino, info={"params": params})


@DATASETS.register("shapes")
def load_shapes(
    n_train: int = 10_000,
    n_val: int = 1_000,
    n_test: int = 1_000,
    n_winoground: int = 200,
    image_size: int = 64,
    seed: int = 0,
    cache_dir: str | None = None,
    workers: int | None = None,
    use_cache: bool = True,
) -> ImageTextData:
    """Built-in compositional scenes with captions, hard negatives and Winoground groups.

    Args:
        n_train, n_val, n_test: images per split (``test_dk`` reuses the test images).
        n_winoground: number of Winoground-style groups (two images, two captions each).
        image_size: side of the square RGB images in pixels.
        seed: everything is a deterministic function of the seed.
        cache_dir: where to cache (default ``$ALIGNFUSE_CACHE`` or ``~/.cache/alignfuse``).
        workers: processes used to generate (the result does not depend on it).
        use_cache: read and write the on-disk cache.

    Returns:
        :class:`ImageTextData` with splits ``train``, ``val``, ``test``, ``test_dk``.

    Example:
        >>> data = load_shapes(n_train=4, n_val=2, n_test=2, n_winoground=1, use_cache=False)
        >>> sorted(data.splits), data["train"].images.shape
        (['test', 'test_dk', 'train', 'val'], (4, 64, 64, 3))
    """
    params = {
        "version": VERSION,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "n_winoground": n_winoground,
        "image_size": image_size,
        "seed": seed,
    }
    if not use_cache:
        images, ann = generate_shapes(
            n_train, n_val, n_test, n_winoground, image_size, seed, workers
        )
        return _assemble(images, ann, params)

    def generate() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        images, ann = generate_shapes(
            n_train, n_val, n_test, n_winoground, image_size, seed, workers
        )
        return {f"images_{k}": v for k, v in images.items()}, ann

    arrays, ann, folder = cached("shapes", params, cache_dir, generate)
    images = {k[len("images_") :]: v for k, v in arrays.items()}
    data = _assemble(images, ann, params)
    data.info["cache"] = str(folder)
    return data


# --------------------------------------------------------------------------- ambiguity


def ambiguity(split: ImageTextSplit) -> dict[str, float]:
    """How many images of the split each caption truly describes, and the R@1 ceilings.

    A caption that is true of ``k`` images cannot be told from ``k - 1`` wrong ones, so the
    best text-to-image R@1 any model can reach is the mean of ``1 / k``. For an image whose
    set of true captions is ``S`` (of which ``m`` are its own), the best image-to-text R@1
    is the mean of ``m / |S|``.

    Returns:
        ``share_ambiguous`` (captions true of more than one image), ``mean_matches``,
        ``ceiling_r1_t2i`` and ``ceiling_r1_i2t``.
    """
    scenes = split.extras["scenes"]
    facts = split.extras["facts"]
    holders: dict[tuple[Any, ...], int] = Counter()
    for objs in scenes:
        for f in scene_facts(objs):
            holders[f] += 1
    ks = np.array([holders[f] for caps in facts for f in caps], dtype=float)
    caption_facts: Counter[tuple[Any, ...]] = Counter(f for caps in facts for f in caps)
    i2t = []
    for objs, own in zip(scenes, facts, strict=True):
        true_for_me = sum(caption_facts[f] for f in scene_facts(objs))
        i2t.append(len(own) / true_for_me)
    return {
        "share_ambiguous": float((ks > 1).mean()),
        "mean_matches": float(ks.mean()),
        "ceiling_r1_t2i": float((1.0 / ks).mean()),
        "ceiling_r1_i2t": float(np.mean(i2t)),
    }
