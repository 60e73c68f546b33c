"""Two-view data: paired rows of two feature matrices (``X``, ``Y``) with optional labels.

* ``digits_twoview``: the noisy-digits protocol of Wang et al. 2015 ("On Deep Multi-View
  Representation Learning") on the UCI handwritten digits that scikit-learn bundles (1,797
  8x8 images, no download). View 1 is a digit rotated by a random angle in
  ``[-pi/4, pi/4]``; view 2 is a *different* image of the same class with uniform noise
  added, clipped to ``[0, 1]``. The only thing the views share is the class.
* ``twoview_files``: two views from ``.npy`` files (``X``, ``Y``, optional labels) or one
  ``.npz`` with arrays ``X``, ``Y`` (and ``labels``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignfuse.data.base import get_split
from alignfuse.errors import DataError
from alignfuse.registry import DATASETS


@dataclass
class TwoViewSplit:
    """Paired rows: ``x`` ``(n, p)``, ``y`` ``(n, q)``, optional integer ``labels`` ``(n,)``."""

    name: str
    x: np.ndarray
    y: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.x.ndim != 2 or self.y.ndim != 2:
            raise DataError(
                f"split {self.name!r}: views must be 2-D, got {self.x.shape}, {self.y.shape}"
            )
        if len(self.x) != len(self.y):
            raise DataError(f"split {self.name!r}: {len(self.x)} rows in X but {len(self.y)} in Y")
        if self.labels is not None and self.labels.shape != (len(self.x),):
            raise DataError(f"split {self.name!r}: labels must have shape ({len(self.x)},)")
        for v, arr in (("X", self.x), ("Y", self.y)):
            if not np.isfinite(arr).all():
                raise DataError(f"split {self.name!r}: {v} contains NaN or Inf")

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class TwoViewData:
    """Named splits of two-view data."""

    name: str
    splits: dict[str, TwoViewSplit]
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, split: str) -> TwoViewSplit:
        return get_split(self.name, self.splits, split)


def _rotate(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angles), torch.sin(angles)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@DATASETS.register("digits_twoview")
def load_digits_twoview(
    seed: int = 0,
    pairs_per_image: int = 3,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> TwoViewData:
    """Noisy two-view digits (Wang et al. 2015 protocol on scikit-learn's 8x8 digits).

    Images are split into train / val / test first (so no image appears in two splits), then
    each image gives ``pairs_per_image`` pairs, each with its own rotation, partner image and
    noise. Deterministic from ``seed``.

    Example:
        >>> data = load_digits_twoview(pairs_per_image=1)
        >>> data["train"].x.shape[1], data["train"].y.shape[1], sorted(data.splits)
        (64, 64, ['test', 'train', 'val'])
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("digits_twoview needs scikit-learn: pip install scikit-learn") from None
    if pairs_per_image < 1:
        raise DataError(f"pairs_per_image must be >= 1, got {pairs_per_image}")
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) <= 0:
        raise DataError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    digits = load_digits()
    images = digits.images.astype(np.float64) / 16.0  # (1797, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    n_train = int(fractions[0] * len(images))
    n_val = int(fractions[1] * len(images))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    splits = {}
    for name, idx in parts.items():
        first = np.repeat(idx, pairs_per_image)
        partner = np.empty_like(first)
        for k, i in enumerate(first):  # another image of the same class within the split
            same = idx[(labels[idx] == labels[i]) & (idx != i)]
            partner[k] = rng.choice(same)
        angles = torch.from_numpy(rng.uniform(-math.pi / 4, math.pi / 4, len(first)))
        view1 = _rotate(torch.from_numpy(images[first])[:, None], angles)[:, 0].numpy()
        noise = rng.uniform(0.0, 1.0, size=(len(first), 8, 8))
        view2 = np.clip(images[partner] + noise, 0.0, 1.0)
        splits[name] = TwoViewSplit(
            name, view1.reshape(len(first), 64), view2.reshape(len(first), 64), labels[first]
        )
    return TwoViewData("digits_twoview", splits, {"seed": seed, "pairs_per_image": pairs_per_image})


def _load_array(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(
            f"{what} file {str(path)!r} is not a readable .npy/.npz array: {err}"
        ) from None
    return arr


@DATASETS.register("twoview_files")
def load_twoview_files(
    x: str,
    y: str | None = None,
    labels: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TwoViewData:
    """Two views from ``.npy`` files (``x``, ``y``, optional ``labels``) or from one ``.npz``
    (``x``) holding arrays ``X``, ``Y`` and optionally ``labels``; split at random into
    train / val / test rows (never unpickles)."""
    px = Path(x)
    if px.suffix == ".npz":
        bundle = _load_array(px, "two-view")
        if not {"X", "Y"} <= set(bundle.files):
            raise DataError(f"{str(px)!r} must hold arrays 'X' and 'Y' (has {list(bundle.files)})")
        try:
            X, Y = bundle["X"], bundle["Y"]
            lab = bundle["labels"] if "labels" in bundle.files else None
        except ValueError as err:  # an object array: numpy refuses to unpickle it
            raise DataError(f"{str(px)!r} cannot be read without unpickling: {err}") from None
    else:
        if y is None:
            raise DataError("pass y= (the second view's .npy) or give x= an .npz with X and Y")
        X, Y = _load_array(px, "X"), _load_array(Path(y), "Y")
        lab = _load_array(Path(labels), "labels") if labels else None
    for name, arr in (("X", X), ("Y", Y)):
        kind = np.asarray(arr).dtype
        if not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
            raise DataError(f"{name} must hold real numbers, got dtype {kind}")
    X, Y = np.asarray(X, dtype=np.float64), np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2:
        raise DataError(f"X and Y must be 2-D, got shapes {X.shape} and {Y.shape}")
    if len(X) != len(Y):
        raise DataError(f"X and Y must pair their rows: {len(X)} vs {len(Y)} rows")
    if not (0 <= val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"bad split fractions val={val_fraction}, test={test_fraction}")
    order = np.random.default_rng(seed).permutation(len(X))
    n_test, n_val = round(test_fraction * len(X)), round(val_fraction * len(X))
    if n_test < 2 or len(X) - n_test - n_val < 2:
        raise DataError(f"too few rows ({len(X)}) to split into train and test")
    parts = {
        "test": order[:n_test],
        "val": order[n_test : n_test + n_val],
        "train": order[n_test + n_val :],
    }
    lab_arr = None
    if lab is not None:
        lab = np.asarray(lab)
        if lab.ndim != 1 or len(lab) != len(X):
            raise DataError(f"labels must be one per row: {len(X)} labels, got shape {lab.shape}")
        whole = np.issubdtype(lab.dtype, np.floating) and bool(np.all(lab == np.round(lab)))
        if not (np.issubdtype(lab.dtype, np.integer) or whole):
            raise DataError(
                f"labels must be integer classes, got {lab.dtype} values such as {lab[:3]}"
            )
        lab_arr = lab.astype(np.int64)
    splits = {
        k: TwoViewSplit(k, X[v], Y[v], None if lab_arr is None else lab_arr[v])
        for k, v in parts.items()
        if len(v)
    }
    return TwoViewData(px.stem, splits)
