"""Representation diagnostics of a joint embedding space.

* ``alignment`` and ``uniformity`` (Wang & Isola 2020, "Understanding contrastive
  representation learning through alignment and uniformity on the hypersphere"): how close
  positive pairs land, and how evenly the embeddings spread over the sphere.
* ``modality_gap`` (Liang et al. 2022, "Mind the gap"): the distance between the centres of
  the two modalities' unit embeddings, which contrastive training leaves apart.
* ``cka`` (Kornblith et al. 2019, "Similarity of neural network representations
  revisited"): centred kernel alignment between two representations of the same examples,
  with a linear or RBF kernel, biased or debiased HSIC (Song et al. 2012).

All take numpy arrays or tensors, compute in float64 on the input's device and return
Python floats.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from alignfuse.metrics._checks import as_float_matrix, same_rows
from alignfuse.registry import METRICS


@METRICS.register("alignment")
def alignment(a: Any, b: Any, alpha: float = 2.0, normalize: bool = True) -> float:
    """Mean ``||a_i - b_i||^alpha`` over the positive pairs ``(a_i, b_i)``; lower is better.

    Args:
        a, b: ``(N, D)`` embeddings, row ``i`` of each a positive pair.
        alpha: exponent (the paper's default 2).
        normalize: project both onto the unit sphere first, as the paper does.

    Example:
        >>> alignment(torch.eye(3), torch.eye(3))
        0.0
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    x, y = as_float_matrix(a, "a"), as_float_matrix(b, "b")
    same_rows(x, y, "a and b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"a and b must share a dimension: {x.shape[1]} vs {y.shape[1]}")
    if normalize:
        x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    return float((x - y).norm(dim=1).pow(alpha).mean())


@METRICS.register("uniformity")
def uniformity(x: Any, t: float = 2.0, normalize: bool = True, chunk: int = 1024) -> float:
    """``log`` of the mean of ``exp(-t ||x_i - x_j||^2)`` over all pairs ``i < j``; lower is
    more uniform. On the unit sphere it lies in ``[-2 t N / (N - 1), 0]`` (Jensen's
    inequality; 0 for a collapsed embedding, about ``-2 t`` for many points spread uniformly
    in high dimension).

    Computed as a float64 log-sum-exp in row chunks, so memory stays at ``chunk x N``; equal
    to the paper's ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``.

    Example:
        >>> round(uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])), 6)  # two antipodes
        -8.0
    """
    if t <= 0:
        raise ValueError(f"t must be > 0, got {t}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    z = as_float_matrix(x, "x", min_rows=2)
    if normalize:
        z = F.normalize(z, dim=1)
    n = z.shape[0]
    sq = z.pow(2).sum(1)
    cols = torch.arange(n, device=z.device)
    parts = []
    for start in range(0, n - 1, chunk):
        rows = cols[start : start + chunk]
        # -t * squared distances, in place in the one (chunk, N) block
        e = (z[rows] @ z.T).mul_(2.0).sub_(sq[rows, None]).sub_(sq[None, :]).clamp_(max=0.0)
        e.mul_(t).masked_fill_(cols[None, :] <= rows[:, None], float("-inf"))
        parts.append(torch.logsumexp(e, dim=1))
    total = torch.logsumexp(torch.cat(parts), dim=0)
    return float(total) - math.log(n * (n - 1) / 2)


@METRICS.register("modality_gap")
def modality_gap(a: Any, b: Any) -> float:
    """``||mean_i a_i/|a_i| - mean_j b_j/|b_j| ||``: the distance between the centres of two
    modalities' unit embeddings (Liang et al. 2022). ``a`` and ``b`` need not pair rows.

    Example:
        >>> modality_gap(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]))  # doctest: +ELLIPSIS
        1.414...
    """
    x, y = as_float_matrix(a, "a"), as_float_matrix(b, "b")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"a and b must share a dimension: {x.shape[1]} vs {y.shape[1]}")
    return float((F.normalize(x, dim=1).mean(0) - F.normalize(y, dim=1).mean(0)).norm())


def _gram(z: torch.Tensor, kernel: str, sigma: float) -> torch.Tensor:
    g = z @ z.T
    if kernel == "linear":
        return g
    sq = g.diagonal()
    d2 = (sq[:, None] + sq[None, :] - 2.0 * g).clamp_min(0.0)
    # bandwidth from the median squared distance (diagonal included), as the authors' code
    med = d2.median()
    if med <= 0:
        raise ValueError("the RBF bandwidth is 0: more than half the pairs are identical")
    return torch.exp(-d2 / (2.0 * sigma**2 * med))


def _centre(g: torch.Tensor, debiased: bool) -> torch.Tensor:
    """The doubly centred Gram matrix; debiased: the U-statistic form of Song et al. 2012
    (zero diagonal), whose inner products are unbiased HSIC estimates up to a factor."""
    g = g.clone()
    n = g.shape[0]
    if debiased:
        g.fill_diagonal_(0.0)
        means = g.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        g = g - means[:, None] - means[None, :]
        g.fill_diagonal_(0.0)
        return g
    means = g.mean(0)
    means = means - means.mean() / 2
    return g - means[:, None] - means[None, :]


@METRICS.register("cka")
def cka(
    x: Any, y: Any, kernel: str = "linear", sigma: float = 1.0, debiased: bool = False
) -> float:
    """Centred kernel alignment ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``: in ``[0, 1]``
    (the debiased estimate can fall slightly below 0 for unrelated representations).

    Args:
        x, y: ``(N, D1)``, ``(N, D2)`` representations of the same ``N`` examples (widths may
            differ).
        kernel: ``"linear"`` or ``"rbf"`` (bandwidth ``sigma`` times the median distance).
        sigma: RBF bandwidth as a fraction of the median distance between examples.
        debiased: use the unbiased HSIC estimator (needs ``N >= 4``); less biased upwards at
            small ``N`` and wide features.

    Linear, biased CKA is computed from the features, ``||Y^T X||_F^2 / (||X^T X||_F
    ||Y^T Y||_F)`` on centred columns (no ``N x N`` matrix); the other variants from Gram
    matrices (``N x N``). CKA is invariant to orthogonal maps and isotropic scaling of
    either representation.

    Example:
        >>> z = torch.randn(50, 8, dtype=torch.float64)
        >>> round(cka(z, 3.0 * z @ torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]), 9)
        1.0
    """
    if kernel not in ("linear", "rbf"):
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    a = as_float_matrix(x, "x", min_rows=4 if debiased else 2)
    b = as_float_matrix(y, "y", min_rows=4 if debiased else 2).to(a.device)
    same_rows(a, b, "x and y")
    if kernel == "linear" and not debiased:
        a, b = a - a.mean(0), b - b.mean(0)
        num = (b.T @ a).pow(2).sum()
        den = (a.T @ a).norm() * (b.T @ b).norm()
    else:
        k = _centre(_gram(a, kernel, sigma), debiased)
        lm = _centre(_gram(b, kernel, sigma), debiased)
        num = (k * lm).sum()
        den = (k * k).sum().sqrt() * (lm * lm).sum().sqrt()
    if den <= 0:
        raise ValueError("a representation is constant over the examples: CKA is undefined")
    return float(num / den)


def embedding_diagnostics(image: Any, text: Any, owner: Any) -> dict[str, float]:
    """The diagnostics of a dual encoder's test embeddings: ``modality_gap``, ``alignment``
    of each caption with its image, and ``uniformity_image`` / ``uniformity_text``.

    Args:
        image: ``(N_images, D)`` image embeddings.
        text: ``(N_texts, D)`` caption embeddings.
        owner: ``(N_texts,)`` the image of each caption.
    """
    img, txt = as_float_matrix(image, "image", min_rows=2), as_float_matrix(text, "text", 2)
    own = torch.as_tensor(owner, device=img.device).long()
    if own.shape != (txt.shape[0],) or int(own.min()) < 0 or int(own.max()) >= img.shape[0]:
        raise ValueError(f"owner must hold {txt.shape[0]} image indices in [0, {img.shape[0]})")
    return {
        "modality_gap": modality_gap(img, txt),
        "alignment": alignment(img[own], txt),
        "uniformity_image": uniformity(img),
        "uniformity_text": uniformity(txt),
    }
