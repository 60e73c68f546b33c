"""The evaluation protocol of the multi-view papers (Andrew et al. 2013; Wang et al. 2015).

* ``corr_sum``: sum of the top-k canonical correlations of the projections on test;
* ``probe_acc``: accuracy of a linear classifier trained on the view-1 projections of the
  training split, tested on the test split's view-1 projections;
* ``nmi``: normalised mutual information between k-means clusters of the test view-1
  projections and the classes;
* ``x2y_r1/5/10``: cross-view retrieval: for each view-1 test row, is its paired view-2
  row among the K most similar (cosine) in the shared projection?
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from alignfuse.data.twoview import TwoViewData
from alignfuse.metrics.probes import kmeans, normalized_mutual_info, probe_accuracy
from alignfuse.metrics.retrieval import retrieval_ranks


def evaluate_two_view(model: Any, data: TwoViewData, k: int | None = None) -> dict[str, float]:
    """Every metric of the protocol for a fitted model with ``transform(X, Y)``."""
    train, test = data["train"], data["test"]
    zx_tr, _ = model.transform(train.x, train.y)
    zx, zy = model.transform(test.x, test.y)
    zx_t, zy_t = torch.as_tensor(np.asarray(zx)), torch.as_tensor(np.asarray(zy))
    k = k or zx_t.shape[1]
    corr = np.sort(np.abs(np.asarray(model.score(test.x, test.y))))[::-1]
    out = {"corr_sum": float(corr[:k].sum())}
    if train.labels is not None and test.labels is not None:
        out["probe_acc"] = probe_accuracy(zx_tr, train.labels, zx, test.labels)
        n_classes = len(np.unique(test.labels))
        clusters = kmeans(zx_t.double(), n_classes).numpy()
        out["nmi"] = normalized_mutual_info(clusters, test.labels)
    a = torch.nn.functional.normalize(zx_t.double(), dim=1)
    b = torch.nn.functional.normalize(zy_t.double(), dim=1)
    ranks, _ = retrieval_ranks(a @ b.T, torch.arange(len(b)))
    for r in (1, 5, 10):
        out[f"x2y_r{r}"] = float((ranks <= r).mean())
    return out
