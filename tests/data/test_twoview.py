"""Two-view data, evaluation probes, SCM, estimator persistence, `alignfuse align`, and the
correlation suite."""

import json

import numpy as np
import pytest
import torch

from alignfuse.cli import main
from alignfuse.correlation import (
    CCA,
    DCCA,
    DCCAE,
    KCCA,
    PLS,
    SCM,
    Procrustes,
    load_estimator,
    save_estimator,
)
from alignfuse.correlation.evaluate import evaluate_two_view
from alignfuse.data.twoview import load_digits_twoview, load_twoview_files
from alignfuse.errors import CheckpointError, DataError
from alignfuse.metrics.probes import kmeans, normalized_mutual_info, probe_accuracy


@pytest.fixture(scope="module")
def digits():
    return load_digits_twoview(pairs_per_image=1)


def test_digits_protocol(digits):
    tr = digits["train"]
    assert tr.x.shape[1] == tr.y.shape[1] == 64
    assert tr.x.min() >= 0 and tr.y.max() <= 1
    assert len(np.unique(tr.labels)) == 10
    # deterministic from the seed, different with another
    again = load_digits_twoview(pairs_per_image=1)
    assert np.array_equal(again["test"].x, digits["test"].x)
    other = load_digits_twoview(seed=1, pairs_per_image=1)
    assert not np.array_equal(other["train"].x, tr.x)
    # view 2 is another image of the same class: never the rotated original itself
    from sklearn.datasets import load_digits

    imgs = load_digits().images.reshape(-1, 64) / 16.0
    noise_free = [np.abs(imgs - row).max(1).min() for row in tr.y[:20]]
    assert min(noise_free) > 0


def test_nmi_matches_sklearn():
    from sklearn.metrics import normalized_mutual_info_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 5, 200), rng.integers(0, 4, 200)
        b[:100] = a[:100]
        assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b))
    assert normalized_mutual_info([0, 0, 1], [5, 5, 7]) == pytest.approx(1.0)


def test_kmeans_and_probe_on_separable_data():
    rng = np.random.default_rng(1)
    centres = np.array([[0, 0], [10, 0], [0, 10]])
    y = rng.integers(0, 3, 300)
    z = centres[y] + rng.normal(size=(300, 2))
    assert normalized_mutual_info(kmeans(torch.from_numpy(z), 3).numpy(), y) == pytest.approx(1.0)
    assert probe_accuracy(z[:200], y[:200], z[200:], y[200:]) == 1.0


def test_probe_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    z = rng.normal(size=(400, 5))
    y = (z[:, 0] + 0.5 * z[:, 1] + 0.3 * rng.normal(size=400) > 0).astype(int) + (z[:, 2] > 1)
    sk = LogisticRegression(C=1e6, max_iter=5000).fit(z[:300], y[:300]).score(z[300:], y[300:])
    ours = probe_accuracy(z[:300], y[:300], z[300:], y[300:], l2=1e-8)
    assert abs(ours - sk) <= 0.02


def test_protocol_and_kernel_advantage(digits):
    lin = evaluate_two_view(
        CCA(10, reg_x=1e-3, reg_y=1e-3).fit(digits["train"].x, digits["train"].y), digits
    )
    assert set(lin) == {"corr_sum", "probe_acc", "nmi", "x2y_r1", "x2y_r5", "x2y_r10"}
    assert 0 < lin["corr_sum"] <= 10 and lin["probe_acc"] > 0.5
    ker = KCCA(10, reg_x=1e-2, reg_y=1e-2, method="nystrom", n_landmarks=500).fit(
        digits["train"].x, digits["train"].y
    )
    assert evaluate_two_view(ker, digits)["probe_acc"] > lin["probe_acc"]


def test_scm_gives_class_posteriors(digits):
    tr, te = digits["train"], digits["test"]
    scm = SCM(10).fit(tr.x, tr.y, tr.labels)
    px, py = scm.transform(te.x, te.y)
    assert px.shape == (len(te), 10) and np.allclose(px.sum(1), 1)
    # the semantic space carries the class: the argmax posterior of view 2 beats chance by far
    assert (py.argmax(1) == te.labels).mean() > 0.5
    with pytest.raises(ValueError, match="needs labels"):
        SCM(5).fit(tr.x, tr.y)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CCA(3, reg_x=1e-3),
        lambda: PLS(3),
        lambda: KCCA(3, method="nystrom", n_landmarks=50),
        lambda: KCCA(2, kernel="poly", degree=2),
        lambda: SCM(4),
        lambda: Procrustes(scaling=True),
        lambda: DCCA(2, hidden=(8,), out_dim=3, epochs=2, batch_size=100),
        lambda: DCCAE(2, hidden=(8,), out_dim=3, epochs=2, batch_size=100),
    ],
)
def test_save_and_load_round_trip(make, tmp_path, digits):
    tr, te = digits["train"], digits["test"]
    model = make()
    model.fit(tr.x[:300], tr.y[:300], tr.labels[:300]) if isinstance(model, SCM) else model.fit(
        tr.x[:300], tr.y[:300]
    )
    save_estimator(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "model.json").read_text())["class"] == type(model).__name__
    back = load_estimator(tmp_path / "m")
    if isinstance(model, Procrustes):
        assert np.allclose(np.asarray(back.transform(te.x)), model.transform(te.x))
    else:
        want, got = model.transform(te.x, te.y), back.transform(te.x, te.y)
        for w, g in zip(want, got, strict=True):
            assert np.allclose(np.asarray(g), w, atol=1e-10)


def test_load_garbage_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no readable saved estimator"):
        load_estimator(tmp_path)


def test_twoview_files_npy_and_npz(tmp_path):
    rng = np.random.default_rng(0)
    X, Y, lab = rng.normal(size=(50, 4)), rng.normal(size=(50, 3)), rng.integers(0, 2, 50)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "y.npy", Y)
    np.save(tmp_path / "l.npy", lab)
    np.savez(tmp_path / "both.npz", X=X, Y=Y, labels=lab)
    a = load_twoview_files(
        str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), str(tmp_path / "l.npy")
    )
    b = load_twoview_files(str(tmp_path / "both.npz"))
    assert np.array_equal(a["train"].x, b["train"].x) and np.array_equal(
        a["test"].labels, b["test"].labels
    )
    assert sum(len(s) for s in a.splits.values()) == 50
    np.save(tmp_path / "short.npy", Y[:40])
    with pytest.raises(DataError, match="pair their rows"):
        load_twoview_files(str(tmp_path / "x.npy"), str(tmp_path / "short.npy"))
    with pytest.raises(DataError, match="does not exist"):
        load_twoview_files(str(tmp_path / "nope.npy"), str(tmp_path / "y.npy"))
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable"):
        load_twoview_files(str(tmp_path / "bad.npy"), str(tmp_path / "y.npy"))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="not a readable"):  # pickled objects are refused
        load_twoview_files(str(tmp_path / "obj.npy"), str(tmp_path / "y.npy"))


def test_align_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 2))
    np.save(tmp_path / "x.npy", np.hstack([z, rng.normal(size=(400, 3))]))
    np.save(
        tmp_path / "y.npy",
        np.hstack([rng.normal(size=(400, 2)), z + 0.1 * rng.normal(size=(400, 2))]),
    )
    np.save(tmp_path / "l.npy", (z[:, 0] > 0).astype(int))
    for method in ("cca", "kcca", "pls", "scm", "procrustes", "dcca"):
        extra = ["--labels", str(tmp_path / "l.npy")] if method == "scm" else []
        y = str(tmp_path / "y.npy") if method != "procrustes" else str(tmp_path / "x.npy")
        args = [
            "align",
            str(tmp_path / "x.npy"),
            y,
            "--method",
            method,
            "--dim",
            "2",
            "--out",
            str(tmp_path / method),
            *extra,
        ]
        assert main(args) == 0, method
        out = capsys.readouterr().out
        assert "saved" in out and (tmp_path / method / "model.safetensors").is_file()
        if method == "cca":
            corr = json.loads(out.split("):")[1].splitlines()[0].strip())
            assert corr[0] > 0.95 and corr[1] > 0.95
    assert main(["align", str(tmp_path / "x.npy"), str(tmp_path / "y.npy"), "--method", "scm"]) == 2
    assert "needs --labels" in capsys.readouterr().err


def test_correlation_suite_through_the_cli(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: corr_small\nbase:\n  task: {name: two_view, args: {components: 5}}\n"
        "  data: {name: digits_twoview, args: {pairs_per_image: 1}}\nexperiments:\n"
        "  - {name: cca, model: {name: cca, args: {reg_x: 1.0e-3, reg_y: 1.0e-3}}}\n"
        "  - {name: kcca_ny, model: {name: kcca, args: {method: nystrom, n_landmarks: 200}}}\n"
    )
    out = tmp_path / "out"
    assert main(["bench", "--suite", str(suite), "--out", str(out), "task.args.components=4"]) == 0
    assert "| cca |" in capsys.readouterr().out
    rows = [json.loads(r) for r in (out / "results.jsonl").read_text().splitlines()]
    assert [r["name"] for r in rows] == ["cca", "kcca_ny"]
    assert rows[0]["config"]["task"]["args"]["components"] == 4
    assert (out / "correlations.png").stat().st_size > 5000
    assert (
        main(
            ["bench", "--suite", str(suite), "--out", str(tmp_path / "o2"), "task.args.componets=3"]
        )
        == 2
    )
    assert "did you mean 'task.args.components'" in capsys.readouterr().err
