"""Every registered metric, called through the registry on a tiny perfect case and a tiny
random one: the perfect case gives the metric's best value, the random one a finite value in
its range, and the result is a float or a flat dict of floats. A registration without a case
here fails (the references each metric is checked against live in the metric's own tests)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from alignfuse.registry import METRICS

G = np.random.default_rng(0)
X = torch.tensor(G.normal(size=(12, 6)), dtype=torch.float32)
Y = torch.tensor(G.normal(size=(12, 6)), dtype=torch.float32)
LABELS = np.array([0, 1, 2] * 4)
REFS = [["a red circle", "one red circle"], ["two blue squares", "a pair of blue squares"]]
CANDS = ["a red circle", "two blue squares"]


def _key(name: str) -> Callable[[Any], float]:
    return lambda out: float(out[name])


# name -> (perfect-case call, random-case call, read the headline value, best value, range)
# (CIDEr-D has no fixed best value: its perfect case only has to beat the random one)
CASES: dict[
    str,
    tuple[
        Callable[[], Any],
        Callable[[], Any],
        Callable[[Any], float],
        float | None,
        tuple[float, float],
    ],
] = {
    "alignment": (
        lambda: METRICS.create("alignment", a=X, b=X),
        lambda: METRICS.create("alignment", a=X, b=Y),
        float,
        0.0,
        (0.0, 4.0),
    ),
    "modality_gap": (
        lambda: METRICS.create("modality_gap", a=X, b=X),
        lambda: METRICS.create("modality_gap", a=X, b=Y),
        float,
        0.0,
        (0.0, 2.0),
    ),
    "cka": (
        lambda: METRICS.create("cka", x=X, y=X),
        lambda: METRICS.create("cka", x=X, y=Y),
        float,
        1.0,
        (0.0, 1.0),
    ),
    "uniformity": (
        lambda: METRICS.create("uniformity", x=torch.eye(6)),
        lambda: METRICS.create("uniformity", x=X),
        float,
        -4.0,
        (-4.0, 0.0),
    ),
    "f1": (
        lambda: METRICS.create("f1", y_true=LABELS, y_pred=LABELS),
        lambda: METRICS.create("f1", y_true=LABELS, y_pred=G.permutation(LABELS)),
        _key("f1_macro"),
        1.0,
        (0.0, 1.0),
    ),
    "roc_auc": (
        lambda: METRICS.create(
            "roc_auc", y_true=(LABELS == 0).astype(int), scores=(LABELS == 0).astype(float)
        ),
        lambda: METRICS.create(
            "roc_auc", y_true=(LABELS == 0).astype(int), scores=G.normal(size=12)
        ),
        float,
        1.0,
        (0.0, 1.0),
    ),
    "hard_negative": (
        lambda: METRICS.create("hard_negative", positive=torch.ones(5), negative=torch.zeros(5)),
        lambda: METRICS.create("hard_negative", positive=torch.randn(5), negative=torch.randn(5)),
        _key("hard_negative_acc"),
        1.0,
        (0.0, 1.0),
    ),
    "winoground": (
        lambda: METRICS.create("winoground", scores=torch.eye(2).expand(3, 2, 2)),
        lambda: METRICS.create("winoground", scores=torch.randn(3, 2, 2)),
        _key("wino_group"),
        1.0,
        (0.0, 1.0),
    ),
    "nmi": (
        lambda: METRICS.create("nmi", a=LABELS, b=LABELS),
        lambda: METRICS.create("nmi", a=LABELS, b=G.permutation(LABELS)),
        float,
        1.0,
        (0.0, 1.0),
    ),
    "probe_accuracy": (
        lambda: METRICS.create(
            "probe_accuracy",
            z_train=np.eye(3)[LABELS] * 5,
            y_train=LABELS,
            z_test=np.eye(3)[LABELS] * 5,
            y_test=LABELS,
        ),
        lambda: METRICS.create(
            "probe_accuracy", z_train=X, y_train=LABELS, z_test=Y, y_test=LABELS
        ),
        float,
        1.0,
        (0.0, 1.0),
    ),
    "retrieval": (
        lambda: METRICS.create("retrieval", sims=torch.eye(4), owner=torch.arange(4)),
        lambda: METRICS.create("retrieval", sims=torch.randn(4, 8), owner=torch.arange(8) % 4),
        _key("t2i_r1"),
        1.0,
        (0.0, 1.0),
    ),
    "retrieval_map": (
        lambda: METRICS.create("retrieval_map", sims=torch.eye(4), owner=torch.arange(4)),
        lambda: METRICS.create("retrieval_map", sims=torch.randn(4, 8), owner=torch.arange(8) % 4),
        _key("t2i_map"),
        1.0,
        (0.0, 1.0),
    ),
    "linking": (
        lambda: METRICS.create(
            "linking",
            scores=[np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 1.0])],
            gold=[{0}, {1, 2}],
            ks=(1, 2),
        ),
        lambda: METRICS.create(
            "linking", scores=[G.normal(size=3), G.normal(size=3)], gold=[{0}, {1, 2}], ks=(1, 2)
        ),
        _key("auc"),
        1.0,
        (0.0, 1.0),
    ),
    "bleu": (
        lambda: METRICS.create("bleu", candidates=CANDS, references=REFS, n=2),
        lambda: METRICS.create("bleu", candidates=["blue circle", "red"], references=REFS, n=2),
        _key("bleu_2"),
        1.0,
        (0.0, 1.0),
    ),
    "rouge_l": (
        lambda: METRICS.create("rouge_l", candidates=CANDS, references=REFS),
        lambda: METRICS.create("rouge_l", candidates=["blue circle", "red"], references=REFS),
        float,
        1.0,
        (0.0, 1.0),
    ),
    "zero_shot": (
        lambda: METRICS.create(
            "zero_shot", image_emb=np.eye(3)[LABELS], class_emb=np.eye(3), labels=LABELS
        ),
        lambda: METRICS.create("zero_shot", image_emb=X[:, :3], class_emb=np.eye(3), labels=LABELS),
        _key("top1"),
        1.0,
        (0.0, 1.0),
    ),
    "cider": (
        lambda: METRICS.create(
            "cider", candidates=[r[0] for r in REFS], references=[[r[0]] * 2 for r in REFS]
        ),
        lambda: METRICS.create("cider", candidates=["blue circle", "red"], references=REFS),
        float,
        None,
        (0.0, 10.0),
    ),
}


def test_every_registered_metric_has_a_contract_case_and_is_listed_after_a_plain_import():
    import subprocess
    import sys

    assert set(METRICS.names()) == set(CASES)
    code = "import alignfuse; print(sorted(alignfuse.list_metrics()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(CASES))


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_registered_metric_gives_its_best_value_on_a_perfect_case(name):
    perfect, random, headline, best, (low, high) = CASES[name]
    for out in (perfect(), random()):
        values = out.values() if isinstance(out, dict) else [out]
        # floats, finite (zero-shot's per-class accuracies come as an array beside them)
        floats = [v for v in values if not isinstance(v, np.ndarray)]
        assert all(isinstance(v, float) and math.isfinite(v) for v in floats), out
        assert low - 1e-6 <= headline(out) <= high + 1e-6, (name, out)
    if best is None:
        assert headline(perfect()) > headline(random()), name
    else:
        assert headline(perfect()) == pytest.approx(best, abs=1e-4), name
