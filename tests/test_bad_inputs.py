"""Every public entry point added for losses, scale and correlation fails on bad input with a
clear error naming the argument."""

import numpy as np
import pytest
import torch

import alignfuse
from alignfuse.correlation import KCCA, Procrustes, cca_loss
from alignfuse.data.twoview import load_digits_twoview
from alignfuse.errors import DataError
from alignfuse.losses import (
    PairHead,
    local_contrastive,
    local_similarity,
    matching,
    n_pair,
    ranking,
    structure_preserving,
    token_wise,
    triplet_center,
)
from alignfuse.metrics.probes import fit_logistic, kmeans, normalized_mutual_info

A = torch.randn(4, 3, dtype=torch.float64)
B = torch.randn(4, 3, dtype=torch.float64)
TOK = torch.randn(4, 5, 3, dtype=torch.float64)

CASES = [
    (lambda: local_contrastive(TOK, TOK[:3]), ValueError, "same number of pairs"),
    (lambda: local_similarity(TOK, torch.randn(4, 5, 2)), ValueError, "differ in width"),
    (lambda: local_similarity(TOK, TOK, gamma1=0.0), ValueError, "gamma1 and gamma2 must be > 0"),
    (lambda: local_contrastive(TOK, TOK, gamma3=-1.0), ValueError, "gamma3 must be > 0"),
    (lambda: local_similarity(TOK[:, :0], TOK), ValueError, "regions is empty"),
    (lambda: token_wise(TOK, TOK[:2]), ValueError, "same number of pairs"),
    (lambda: token_wise(TOK[:1], TOK[:1]), ValueError, "at least 2 pairs"),
    (lambda: token_wise(A, B), ValueError, r"x must have shape \(N, L, D\)"),
    (
        lambda: triplet_center(
            A, B, torch.tensor([0, 1, 0, 5]), torch.randn(3, 3, dtype=torch.float64)
        ),
        ValueError,
        r"labels must lie in \[0, 3\)",
    ),
    (
        lambda: triplet_center(
            A, B, torch.tensor([0, 1, 0, 1]), torch.randn(3, 2, dtype=torch.float64)
        ),
        ValueError,
        "centers must have shape",
    ),
    (
        lambda: alignfuse.create_loss("triplet_center", num_classes=3, dim=3)(A, B),
        ValueError,
        "needs labels",
    ),
    (lambda: matching(PairHead(3).double(), A, B, torch.zeros(4, 3)), ValueError, "disagree"),
    (
        lambda: matching(PairHead(3).double(), A, B, torch.full((4, 4), float("nan"))),
        ValueError,
        "NaN",
    ),
    (lambda: n_pair(A, B, l2_reg=-1.0), ValueError, "l2_reg must be >= 0"),
    (lambda: ranking(A, B, tau=0.0), ValueError, "tau must be > 0"),
    (lambda: structure_preserving(A, B, margin=0.0), ValueError, "margin must be > 0"),
    (lambda: alignfuse.create_loss("sigmoid", scale=0.0), ValueError, "scale must be > 0"),
    (
        lambda: alignfuse.create_loss("matching", temperature=0.0),
        ValueError,
        "temperature must be > 0",
    ),
    (lambda: cca_loss(A, B[:3]), ValueError, "same number of rows"),
    (lambda: cca_loss(A, B, reg=-1.0), ValueError, "reg must be >= 0"),
    (lambda: cca_loss(A, B, n_components=5), ValueError, r"n_components must be in \[1, 3\]"),
    (lambda: cca_loss(A.float() * float("inf"), B.float()), ValueError, "a contains NaN or Inf"),
    (lambda: cca_loss(A[:, :1].repeat(1, 3), B, reg=0.0), ValueError, "singular"),
    (lambda: KCCA(kernel="cosine").fit(A.numpy(), B.numpy()), ValueError, "kernel must be one of"),
    (lambda: KCCA(method="fast").fit(A.numpy(), B.numpy()), ValueError, "method must be"),
    (lambda: KCCA(reg_x=-1.0).fit(A.numpy(), B.numpy()), ValueError, "reg_x must be >= 0"),
    (lambda: Procrustes().transform(A.numpy()), RuntimeError, "not fitted"),
    (lambda: kmeans(A, 9), ValueError, r"k must be in \[1, 4\]"),
    (lambda: normalized_mutual_info([0, 1], [0, 1, 1]), ValueError, "equal non-empty"),
    (lambda: fit_logistic(A, torch.tensor([0, 1])), ValueError, r"z must be \(n, d\) and y \(n,\)"),
    (lambda: load_digits_twoview(pairs_per_image=0), DataError, "pairs_per_image must be >= 1"),
    (lambda: load_digits_twoview(fractions=(0.5, 0.5, 0.5)), DataError, "fractions must be"),
]


@pytest.mark.parametrize(
    ("call", "error", "message"), CASES, ids=[str(i) for i in range(len(CASES))]
)
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_grad_cache_chunk_must_be_positive():
    from alignfuse.engine.grad_cache import grad_cache_step

    with pytest.raises(ValueError, match="grad cache chunk must be >= 1"):
        grad_cache_step(None, None, torch.zeros(2, 3, 8, 8), {}, 0)


def test_kmeans_matches_sklearn_inertia():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(0)
    z = np.vstack([rng.normal(c, 1.0, size=(60, 3)) for c in (0, 4, 8, 12)])
    ours = kmeans(torch.from_numpy(z), 4, n_init=5).numpy()
    inertia = sum(((z[ours == c] - z[ours == c].mean(0)) ** 2).sum() for c in range(4))
    sk = KMeans(4, n_init=10, random_state=0).fit(z)
    assert inertia == pytest.approx(sk.inertia_, rel=1e-6)
    assert normalized_mutual_info(ours, sk.labels_) == pytest.approx(1.0)


def test_dtypes_are_named_or_handled():
    import alignfuse
    from alignfuse.losses import info_nce
    from alignfuse.metrics import retrieval_metrics
    from alignfuse.temporal import SoftDTWLoss, dtw

    x, y = torch.randn(10, 3), torch.randn(12, 3)
    # half precision runs the dynamic programmes in float32, equal to float32 inputs
    xb, yb = x.bfloat16(), y.bfloat16()
    assert torch.equal(dtw(xb, yb), dtw(xb.float(), yb.float()))
    loss = SoftDTWLoss(gamma=0.1)(x[None].half(), y[None].half())
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    with pytest.raises(ValueError, match="must be real-valued, got dtype torch.complex64"):
        dtw(x.to(torch.complex64), y)
    fusion = alignfuse.create_fusion("co_attention", dims={"image": 8, "text": 8}, out_dim=4)
    with pytest.raises(
        ValueError, match="modality 'image' must be floating point, got torch.int64"
    ):
        fusion({"image": torch.randint(0, 5, (2, 3, 8)), "text": torch.randn(2, 4, 8)})
    sims = torch.randint(0, 5, (3, 6))
    owner = torch.arange(6) % 3
    assert retrieval_metrics(sims, owner) == retrieval_metrics(sims.double(), owner)
    with pytest.raises(ValueError, match="sims must hold real scores, got dtype torch.bool"):
        retrieval_metrics(sims > 2, owner)
    with pytest.raises(ValueError, match="must share a dtype, got torch.float64 and torch.float32"):
        info_nce(torch.randn(4, 8).double(), torch.randn(4, 8))


def test_read_only_cache_and_huge_images(tmp_path, monkeypatch):
    import os
    import warnings

    from PIL import Image

    from alignfuse.data import load_captions
    from alignfuse.data.cache import cached

    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits: make the write fail
            monkeypatch.setattr(
                "alignfuse.data.cache.write_cache",
                lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied")),
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arrays, _, _ = cached("toy", {"a": 1}, ro, lambda: ({"x": np.ones(3)}, {}))
        assert arrays["x"].sum() == 3
        assert any("continuing without it" in str(w.message) for w in caught)
    finally:
        os.chmod(ro, 0o700)
    # an image over PIL's decompression-bomb limit is named
    folder = tmp_path / "caps"
    (folder / "images").mkdir(parents=True)
    Image.new("L", (2, 2)).save(folder / "images" / "a.png")
    (folder / "dataset_x.json").write_text(
        '{"images": [{"filename": "a.png", "split": "test", "sentences": [{"raw": "a"}]}]}'
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1)  # 4 pixels > 2 x the limit
    with pytest.raises(DataError, match="cannot read image .*a.png"):
        load_captions(str(folder))


def test_nan_settings_complex_views_and_bad_labels(tmp_path):
    from alignfuse.correlation import CCA
    from alignfuse.data.twoview import load_twoview_files
    from alignfuse.losses import info_nce

    a, b = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ValueError, match="logit_scale must be finite"):
        info_nce(a, b, logit_scale=float("nan"))
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        alignfuse.create_loss("info_nce", temperature=float("nan"))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="X must be real-valued"):
        CCA(2).fit(rng.normal(size=(30, 4)) + 1j, rng.normal(size=(30, 3)))
    np.save(tmp_path / "x.npy", rng.normal(size=(50, 5)))
    np.save(tmp_path / "y.npy", rng.normal(size=(50, 4)))
    np.save(tmp_path / "short.npy", np.arange(10))
    np.save(tmp_path / "float.npy", rng.random(50))
    np.save(tmp_path / "whole.npy", np.arange(50) % 3 * 1.0)
    files = (str(tmp_path / "x.npy"), str(tmp_path / "y.npy"))
    with pytest.raises(DataError, match="labels must be one per row: 50 labels"):
        load_twoview_files(*files, str(tmp_path / "short.npy"))
    with pytest.raises(DataError, match="labels must be integer classes"):
        load_twoview_files(*files, str(tmp_path / "float.npy"))
    data = load_twoview_files(*files, str(tmp_path / "whole.npy"))  # 0.0, 1.0, 2.0 are fine
    assert data["train"].labels.dtype == np.int64


def test_a_diverging_run_stops_with_the_divergence_error(tmp_path, tiny_overrides):
    from alignfuse.errors import TrainingDivergedError
    from helpers import quiet_trainer

    tr = quiet_trainer(tmp_path, [*tiny_overrides, "train.lr=1e30", "train.grad_clip=0"], "div")
    with pytest.raises(TrainingDivergedError, match="loss is nan at step .*Lower train.lr"):
        tr.fit()
