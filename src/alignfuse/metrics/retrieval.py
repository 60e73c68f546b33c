"""Cross-modal retrieval metrics with several captions per image.

``sims`` is an ``(N_images, N_texts)`` score matrix (higher is better) and ``owner[t]`` the
image of text ``t``. Image-to-text: the rank of an image is the best rank of any of its own
captions. Text-to-image: the rank of the caption's image. Ranks are 1-based; ties are broken
pessimistically (a tied wrong item counts as ranked above).
"""

from __future__ import annotations

import numpy as np
import torch

from alignfuse.registry import METRICS


def _as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def _checked(
    sims: torch.Tensor | np.ndarray, owner: torch.Tensor | np.ndarray, chunk: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sims (N_images, N_texts)`` finite, ``owner (N_texts,)`` long on its device, every
    image owning at least one text; ``chunk >= 1``."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    s = _as_tensor(sims)
    if s.dtype == torch.bool or s.is_complex():
        raise ValueError(f"sims must hold real scores, got dtype {s.dtype}")
    if not s.is_floating_point():  # integer scores rank like any others
        s = s.double()
    if s.ndim != 2:
        raise ValueError(f"sims must be (N_images, N_texts), got {tuple(s.shape)}")
    n_img, n_txt = s.shape
    own = _as_tensor(owner)
    if own.is_floating_point() or own.dtype == torch.bool:
        raise ValueError(f"owner must hold integer image indices, got dtype {own.dtype}")
    own = own.to(device=s.device, dtype=torch.long)
    if own.shape != (n_txt,):
        raise ValueError(f"owner must have shape ({n_txt},), got {tuple(own.shape)}")
    if n_img == 0 or n_txt == 0:
        raise ValueError("sims is empty")
    if int(own.min()) < 0 or int(own.max()) >= n_img:
        raise ValueError(f"owner holds image indices outside [0, {n_img})")
    if not torch.isfinite(s).all():
        raise ValueError("sims contains NaN or Inf")
    counts = torch.bincount(own, minlength=n_img)
    if (counts == 0).any():
        raise ValueError(f"image {int((counts == 0).nonzero()[0])} has no caption in owner")
    return s, own


def retrieval_ranks(
    sims: torch.Tensor | np.ndarray, owner: torch.Tensor | np.ndarray, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks: image-to-text ``(N_images,)`` and text-to-image ``(N_texts,)``.

    Computed in chunks of rows so memory stays at ``chunk x N`` beyond the input.
    """
    s, own = _checked(sims, owner, chunk)
    return _i2t_ranks(s, own, chunk).cpu().numpy(), _t2i_ranks(s, own, chunk).cpu().numpy()


def _i2t_ranks(s: torch.Tensor, own: torch.Tensor, chunk: int) -> torch.Tensor:
    """Rank of each image's best own caption (checked inputs)."""
    n_img = s.shape[0]
    i2t = torch.empty(n_img, dtype=torch.long, device=s.device)
    for start in range(0, n_img, chunk):
        block = s[start : start + chunk]
        rows = torch.arange(start, start + len(block), device=s.device)
        is_own = own[None, :] == rows[:, None]
        best_own = block.masked_fill(~is_own, float("-inf")).max(1).values
        # rank of the best own caption = 1 + number of other captions scoring >= it
        i2t[start : start + len(block)] = 1 + ((block >= best_own[:, None]) & ~is_own).sum(1)
    return i2t


def _t2i_ranks(s: torch.Tensor, own: torch.Tensor, chunk: int) -> torch.Tensor:
    """Rank of each caption's image (checked inputs)."""
    n_txt = s.shape[1]
    t2i = torch.empty(n_txt, dtype=torch.long, device=s.device)
    st = s.T
    for start in range(0, n_txt, chunk):
        block = st[start : start + chunk]
        idx = own[start : start + len(block)]
        pos = block.gather(1, idx[:, None])
        wrong = torch.ones_like(block, dtype=torch.bool)
        wrong[torch.arange(len(block), device=s.device), idx] = False
        t2i[start : start + len(block)] = 1 + ((block >= pos) & wrong).sum(1)
    return t2i


@METRICS.register("retrieval")
def retrieval_metrics(
    sims: torch.Tensor | np.ndarray,
    owner: torch.Tensor | np.ndarray,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """R@K both ways, rsum, median and mean rank for image-text retrieval.

    Returns keys ``i2t_r{K}``, ``t2i_r{K}`` (fractions in [0, 1]), ``rsum`` (sum of the six
    recalls, in percent as the field reports it, max 600), ``i2t_medr``, ``t2i_medr``,
    ``i2t_meanr``, ``t2i_meanr``.

    Example:
        >>> sims = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.8, 0.7]])
        >>> m = retrieval_metrics(sims, torch.tensor([0, 1, 1]), ks=(1,))
        >>> m["i2t_r1"], m["t2i_r1"]
        (1.0, 1.0)
    """
    i2t, t2i = retrieval_ranks(sims, owner)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((i2t <= k).mean())
    for k in ks:
        out[f"t2i_r{k}"] = float((t2i <= k).mean())
    out["rsum"] = 100.0 * sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    out["i2t_medr"] = float(np.median(i2t))
    out["t2i_medr"] = float(np.median(t2i))
    out["i2t_meanr"] = float(i2t.mean())
    out["t2i_meanr"] = float(t2i.mean())
    return out


def average_precision_rows(scores: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Average precision of each row of ``scores (R, M)`` against the boolean ``positive``
    mask (every row with at least one positive): the mean over its positives ``j`` of
    ``#(positives scoring >= s_j) / #(items scoring >= s_j)``. That is the area under the
    step precision-recall curve with tied scores taken as one threshold, as
    scikit-learn's ``average_precision_score``."""
    m = scores.shape[1]
    ascending = scores.sort(1).values
    pos_only = scores.masked_fill(~positive, float("-inf")).sort(1).values
    at_least = m - torch.searchsorted(ascending, scores.contiguous(), side="left")
    pos_at_least = m - torch.searchsorted(pos_only, scores.contiguous(), side="left")
    precision = pos_at_least.to(scores.dtype) / at_least.to(scores.dtype)
    return (precision * positive).sum(1) / positive.sum(1)


@METRICS.register("retrieval_map")
def retrieval_map(
    sims: torch.Tensor | np.ndarray, owner: torch.Tensor | np.ndarray, chunk: int = 1024
) -> dict[str, float]:
    """Mean average precision both ways: ``i2t_map`` (each image's positives are all its
    captions) and ``t2i_map`` (one positive image per caption: ``1 / rank``, with the
    ranks of :func:`retrieval_ranks`). Chunked over rows (memory ``chunk x N``).

    Example:
        >>> sims = torch.tensor([[0.9, 0.5, 0.2], [0.3, 0.8, 0.7]])
        >>> m = retrieval_map(sims, torch.tensor([0, 1, 0]))  # image 0 owns texts 0 and 2
        >>> round(m["i2t_map"], 4), round(m["t2i_map"], 4)  # ((1 + 2/3) / 2 + 1) / 2
        (0.9167, 0.8333)
    """
    s, own = _checked(sims, owner, chunk)
    s = s.to(torch.float64)
    n_img = s.shape[0]
    i2t = []
    for start in range(0, n_img, chunk):
        rows = torch.arange(start, min(start + chunk, n_img), device=s.device)
        i2t.append(average_precision_rows(s[rows], own[None, :] == rows[:, None]))
    return {
        "i2t_map": float(torch.cat(i2t).mean()),
        "t2i_map": float((1.0 / _t2i_ranks(s, own, chunk).double()).mean()),
    }
