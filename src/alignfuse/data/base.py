"""Containers shared by every image-text dataset: a split and a dataset of splits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from alignfuse.errors import DataError


@dataclass
class ImageTextSplit:
    """Images with several captions each.

    Attributes:
        name: split name (``train``, ``val``, ``test``, ``test_dk``, ...).
        images: ``uint8`` array of shape ``(N, H, W, 3)``, or precomputed features: a float
            array ``(N, R, D)`` (``R`` regions each, as SCAN and VSE++ release them) or
            ``(N, D)`` (see :attr:`is_features`); a memory-mapped array streams from disk.
        captions: ``N`` lists of caption strings (the same count per image is not required).
        extras: dataset-specific annotations (scenes, grounding, questions, hard negatives).
    """

    name: str
    images: np.ndarray
    captions: list[list[str]]
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        pixels = self.images.ndim == 4 and self.images.shape[-1] == 3
        pixels = pixels and self.images.dtype == np.uint8
        features = self.images.ndim in (2, 3) and np.issubdtype(self.images.dtype, np.floating)
        if not (pixels or features):
            raise DataError(
                f"split {self.name!r}: images must be uint8 (N, H, W, 3) or float features "
                f"(N, R, D) / (N, D), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.captions) != len(self.images):
            raise DataError(
                f"split {self.name!r}: {len(self.images)} images but {len(self.captions)} "
                "caption lists"
            )
        for i, caps in enumerate(self.captions):
            if not caps:
                raise DataError(f"split {self.name!r}: image {i} has no caption")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def is_features(self) -> bool:
        """Whether ``images`` holds precomputed features rather than pixels."""
        return self.images.ndim != 4

    def flat_captions(self) -> tuple[list[str], np.ndarray]:
        """All captions in one list and, for each, the index of its image."""
        texts = [c for caps in self.captions for c in caps]
        owner = np.repeat(np.arange(len(self.captions)), [len(c) for c in self.captions])
        return texts, owner

    def subset(self, n: int) -> ImageTextSplit:
        """The first ``n`` images with their captions (extras are dropped)."""
        return ImageTextSplit(self.name, self.images[:n], self.captions[:n])


@dataclass
class WinogroundSet:
    """Groups of two images and two captions made of the same words in another order.

    ``images[g, k]`` is described by ``captions[g][k]`` and not by ``captions[g][1 - k]``.
    """

    images: np.ndarray  # (G, 2, H, W, 3) uint8
    captions: list[tuple[str, str]]
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.captions)


S = TypeVar("S")


def get_split(dataset: str, splits: dict[str, S], split: str) -> S:
    """``splits[split]``, or a :class:`DataError` naming the dataset and the splits it has."""
    try:
        return splits[split]
    except KeyError:
        raise DataError(
            f"dataset {dataset!r} has no split {split!r} (has: {', '.join(splits)})"
        ) from None


@dataclass
class ImageTextData:
    """A dataset: named splits plus optional compositional probes and metadata."""

    name: str
    splits: dict[str, ImageTextSplit]
    winoground: WinogroundSet | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> ImageTextSplit:
        return get_split(self.name, self.splits, split)

    @property
    def train_texts(self) -> list[str]:
        """Every training caption (the only text a vocabulary may be built from)."""
        return self["train"].flat_captions()[0]
