"""``clips``: short videos of a shape performing a sequence of events, each clip with its
ordered clause descriptions and the true frame span of every clause.

A clip shows one actor (a shape of the ``shapes`` vocabulary) and a still distractor. The
actor performs 3 to 5 events in a row, each 3 to 14 frames long, no event twice in a row:
``moves left / right / up / down``, ``grows``, ``shrinks``, ``turns <colour>`` (a gradual
colour change) or ``waits``. Clause ``k`` reads "the <shape> <event>", and ``spans[k]`` is
its ``[start, end)`` frame range. Deterministic from the seed; cached like ``shapes``.

Example:
    >>> data = load_clips(n_train=2, n_val=1, n_test=1, use_cache=False)
    >>> clip = data["train"][0]
    >>> clip.frames.shape[1:], clip.clauses[0].split()[0], clip.spans[-1][1] == len(clip.frames)
    ((32, 32, 3), 'the', True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from alignfuse.data.base import get_split
from alignfuse.data.cache import cached
from alignfuse.data.shapes import COLORS, SHAPES, _polygon
from alignfuse.errors import DataError
from alignfuse.registry import DATASETS

VERSION = 2
SIZE = 32
MOVES = {"moves left": (-1, 0), "moves right": (1, 0), "moves up": (0, -1), "moves down": (0, 1)}
EVENTS = (*MOVES, "grows", "shrinks", "turns", "waits")
SPEED = 1.3  # pixels per frame
GROWTH = 0.45  # radius change per frame
R_MIN, R_MAX = 3.0, 8.5


@dataclass
class Clip:
    """One clip: frames ``(T, H, W, 3)`` uint8, clause texts and ``[start, end)`` spans."""

    frames: np.ndarray
    clauses: list[str]
    spans: list[tuple[int, int]]

    def labels(self) -> np.ndarray:
        """The clause index of every frame, ``(T,)``."""
        out = np.empty(len(self.frames), dtype=np.int64)
        for k, (a, b) in enumerate(self.spans):
            out[a:b] = k
        return out


@dataclass
class ClipSplit:
    name: str
    clips: list[Clip]

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> Clip:
        return self.clips[i]


@dataclass
class ClipData:
    name: str
    splits: dict[str, ClipSplit]
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> ClipSplit:
        return get_split(self.name, self.splits, split)

    def vocabulary(self) -> list[str]:
        """Every word of every clause, sorted."""
        return sorted(
            {w for s in self.splits.values() for c in s.clips for t in c.clauses for w in t.split()}
        )


def _render(objs: list[dict[str, Any]], noise: np.random.Generator) -> np.ndarray:
    ss = 4
    img = Image.new("RGB", (SIZE * ss, SIZE * ss), (28, 28, 32))
    draw = ImageDraw.Draw(img)
    for o in objs:
        x, y, r = o["x"] * ss, o["y"] * ss, o["r"] * ss
        rgb = tuple(round(float(v)) for v in o["rgb"])
        if o["shape"] == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb)
        else:
            draw.polygon(_polygon(o["shape"], x, y, r), fill=rgb)
    small = np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.int16)
    return np.clip(small + np.round(noise.normal(0.0, 3.0, small.shape)), 0, 255).astype(np.uint8)


def _feasible(event: str, x: float, y: float, r: float, length: int) -> bool:
    if event in MOVES:
        dx, dy = MOVES[event]
        nx, ny = x + dx * SPEED * length, y + dy * SPEED * length
        return r + 1 <= nx <= SIZE - r - 1 and r + 1 <= ny <= SIZE - r - 1
    if event == "grows":
        nr = r + GROWTH * length
        return (
            nr <= R_MAX
            and r + 1 <= x - (nr - r)
            and x + nr <= SIZE - 1
            and nr <= y <= SIZE - nr - 1
        )
    if event == "shrinks":
        return r - GROWTH * length >= R_MIN
    return True


def make_clip(rng: np.random.Generator) -> Clip:
    """Draw one clip."""
    colors = list(COLORS)
    shape = str(rng.choice(SHAPES))
    color = str(rng.choice(colors))
    x, y, r = rng.uniform(11, SIZE - 11), rng.uniform(11, SIZE - 11), rng.uniform(4.5, 6.0)
    rgb = np.array(COLORS[color], dtype=float)
    dshape = str(rng.choice([s for s in SHAPES if s != shape]))
    dcolor = str(rng.choice([c for c in colors if c != color]))
    corner = rng.integers(4)
    distractor = {
        "shape": dshape,
        "rgb": COLORS[dcolor],
        "r": 2.5,
        "x": 3.5 if corner % 2 == 0 else SIZE - 3.5,
        "y": 3.5 if corner < 2 else SIZE - 3.5,
    }
    n_events = int(rng.integers(3, 6))
    frames: list[np.ndarray] = []
    clauses: list[str] = []
    spans: list[tuple[int, int]] = []
    prev = ""
    for _ in range(n_events):
        length = int(rng.integers(3, 15))
        options = [e for e in EVENTS if e != prev and _feasible(e, x, y, r, length)]
        event = str(rng.choice(options))
        target = rgb
        if event == "turns":
            color = str(rng.choice([c for c in colors if c != color]))
            target = np.array(COLORS[color], dtype=float)
            clause = f"the {shape} turns {color}"
        else:
            clause = f"the {shape} {event}"
        start = len(frames)
        src = rgb.copy()
        for t in range(length):
            if event in MOVES:
                dx, dy = MOVES[event]
                x, y = x + dx * SPEED, y + dy * SPEED
            elif event == "grows":
                r += GROWTH
            elif event == "shrinks":
                r -= GROWTH
            elif event == "turns":
                rgb = src + (target - src) * (t + 1) / length
            actor = {"shape": shape, "rgb": rgb, "r": r, "x": x, "y": y}
            frames.append(_render([distractor, actor], rng))
        clauses.append(clause)
        spans.append((start, len(frames)))
        prev = event
    return Clip(np.stack(frames), clauses, spans)


def _generate(sizes: dict[str, int], seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays: dict[str, np.ndarray] = {}
    ann: dict[str, Any] = {}
    for code, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng([seed, code])
        clips = [make_clip(rng) for _ in range(n)]
        arrays[f"frames_{split}"] = np.concatenate([c.frames for c in clips])
        ann[split] = [{"clauses": c.clauses, "spans": c.spans} for c in clips]
    return arrays, ann


@DATASETS.register("clips")
def load_clips(
    n_train: int = 600,
    n_val: int = 100,
    n_test: int = 200,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
) -> ClipData:
    """Clips of a moving shape with ordered clause descriptions and true clause spans."""
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise DataError(f"n_{k} must be a positive integer, got {v!r}")
    params = {"version": VERSION, **{f"n_{k}": v for k, v in sizes.items()}, "seed": seed}
    if use_cache:
        arrays, ann, folder = cached("clips", params, cache_dir, lambda: _generate(sizes, seed))
    else:
        (arrays, ann), folder = _generate(sizes, seed), None
    splits = {}
    for split in sizes:
        frames = arrays[f"frames_{split}"]
        clips, at = [], 0
        for meta in ann[split]:
            spans = [(int(a), int(b)) for a, b in meta["spans"]]
            n = spans[-1][1]
            clips.append(Clip(frames[at : at + n], list(meta["clauses"]), spans))
            at += n
        if at != len(frames):
            raise DataError(
                f"clips cache: split {split!r} holds {len(frames)} frames, annotations {at}"
            )
        splits[split] = ClipSplit(split, clips)
    return ClipData("clips", splits, {**params, "cache": str(folder) if folder else None})
