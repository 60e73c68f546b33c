"""Evaluation probes on learned representations: a linear (logistic) classifier, k-means
clustering and normalised mutual information. Pure torch, deterministic."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from alignfuse.registry import METRICS


def fit_logistic(
    z: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with L2 penalty, fitted by L-BFGS on standardised
    features. Returns ``(W, b)`` acting on the raw features."""
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise ValueError(f"z must be (n, d) and y (n,), got {tuple(z.shape)}, {tuple(y.shape)}")
    mu, sd = z.mean(0), z.std(0).clamp_min(1e-12)
    zs = (z - mu) / sd
    n_classes = int(y.max()) + 1
    w = torch.zeros(z.shape[1], n_classes, dtype=z.dtype, device=z.device, requires_grad=True)
    b = torch.zeros(n_classes, dtype=z.dtype, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(zs @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    w_raw = (w / sd[:, None]).detach()
    return w_raw, (b - (mu / sd) @ w).detach()


@METRICS.register("probe_accuracy")
def probe_accuracy(
    z_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    z_test: torch.Tensor | np.ndarray,
    y_test: torch.Tensor | np.ndarray,
    l2: float = 1e-3,
) -> float:
    """Test accuracy of a logistic-regression probe trained on ``z_train``."""
    zt = torch.as_tensor(z_train, dtype=torch.float64)
    yt = torch.as_tensor(y_train, dtype=torch.long)
    w, b = fit_logistic(zt, yt, l2)
    pred = (torch.as_tensor(z_test, dtype=torch.float64) @ w + b).argmax(1)
    return float((pred == torch.as_tensor(y_test, dtype=torch.long)).double().mean())


def kmeans(
    z: torch.Tensor, k: int, n_init: int = 5, max_iter: int = 100, seed: int = 0
) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; the best of ``n_init`` runs. Returns labels."""
    if not 1 <= k <= z.shape[0]:
        raise ValueError(f"k must be in [1, {z.shape[0]}], got {k}")
    g = torch.Generator().manual_seed(seed)
    best, best_inertia = None, float("inf")
    for _ in range(n_init):
        centres = z[torch.randint(len(z), (1,), generator=g)]
        for _c in range(1, k):
            d2 = torch.cdist(z, centres).pow(2).min(1).values
            probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / len(d2))
            centres = torch.cat(
                [centres, z[torch.multinomial(probs.float().cpu(), 1, generator=g)]]
            )
        for _it in range(max_iter):
            assign = torch.cdist(z, centres).argmin(1)
            new = torch.stack(
                [z[assign == c].mean(0) if (assign == c).any() else centres[c] for c in range(k)]
            )
            if torch.allclose(new, centres):
                break
            centres = new
        inertia = float(torch.cdist(z, centres).pow(2).min(1).values.sum())
        if inertia < best_inertia:
            best, best_inertia = assign, inertia
    assert best is not None
    return best


@METRICS.register("nmi")
def normalized_mutual_info(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Normalised mutual information of two labelings (arithmetic-mean normalisation, as
    scikit-learn's default)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"labelings must be equal non-empty 1-D arrays, got {a.shape}, {b.shape}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    joint = np.zeros((ia.max() + 1, ib.max() + 1))
    np.add.at(joint, (ia, ib), 1)
    p = joint / a.size
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha = float(-(pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = float(-(pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha == 0 and hb == 0:
        return 1.0
    return mi / max((ha + hb) / 2, 1e-300)
