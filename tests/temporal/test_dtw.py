"""DTW family: values and paths against tslearn and dtaidistance, constraints, variable
lengths, the torch (device) path against the compiled path, and a naive recursion."""

import itertools

import numpy as np
import pytest
import torch

from alignfuse.temporal import cdist_dtw, dtw, dtw_path, pairwise_cost, subsequence_dtw

tm = pytest.importorskip("tslearn.metrics")
dtai = pytest.importorskip("dtaidistance.dtw")

SHAPES = [(10, 13, 1), (30, 20, 3), (25, 25, 2), (7, 40, 1)]
CONSTRAINTS = [
    ({}, {}),
    (
        {"global_constraint": "sakoe_chiba", "sakoe_chiba_radius": 2},
        {"global_constraint": "sakoe_chiba", "sakoe_chiba_radius": 2},
    ),
    (
        {"global_constraint": "itakura", "itakura_max_slope": 2.0},
        {"global_constraint": "itakura", "itakura_max_slope": 2.0},
    ),
]


def naive_dtw(x, y):
    """Textbook recursion over the full matrix of squared Euclidean costs."""
    n, m = len(x), len(y)
    r = np.full((n + 1, m + 1), np.inf)
    r[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            c = float(((x[i - 1] - y[j - 1]) ** 2).sum())
            r[i, j] = c + min(r[i - 1, j - 1], r[i - 1, j], r[i, j - 1])
    return np.sqrt(r[n, m])


@pytest.mark.parametrize(("shape", "constraint"), list(itertools.product(SHAPES, CONSTRAINTS)))
def test_dtw_and_path_match_tslearn(shape, constraint):
    ours_kw, ts_kw = constraint
    n, m, d = shape
    rng = np.random.default_rng(n * m + d)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(m, d))
    try:
        ref = tm.dtw(x, y, **ts_kw)
    except RuntimeWarning:  # tslearn: no admissible path
        assert float(dtw(x, y, **ours_kw)) == float("inf")
        return
    for backend in ("numba", "torch"):
        assert float(dtw(x, y, backend=backend, **ours_kw)) == pytest.approx(ref, rel=1e-12)
    path, value = dtw_path(x, y, **ours_kw)
    ref_path, ref_value = tm.dtw_path(x, y, **ts_kw)
    assert path.tolist() == [list(p) for p in ref_path]
    assert float(value) == pytest.approx(ref_value, rel=1e-12)


def test_dtw_matches_dtaidistance_and_naive_loop():
    rng = np.random.default_rng(0)
    for n, m in [(50, 50), (100, 37), (1, 9)]:
        x, y = rng.normal(size=n), rng.normal(size=m)
        ref = dtai.distance(x, y)
        assert float(dtw(x, y)) == pytest.approx(ref, rel=1e-12)
        assert float(dtw(x, y)) == pytest.approx(naive_dtw(x[:, None], y[:, None]), rel=1e-12)
        assert (
            float(dtw(x, y, global_constraint="sakoe_chiba", sakoe_chiba_radius=3)) >= ref - 1e-12
        )


def test_sakoe_chiba_matches_dtaidistance_window_on_equal_lengths():
    # equal lengths: tslearn's radius r is dtaidistance's window r + 1
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=60), rng.normal(size=60)
    for r in (0, 1, 5):
        ours = float(dtw(x, y, global_constraint="sakoe_chiba", sakoe_chiba_radius=r))
        assert ours == pytest.approx(dtai.distance(x, y, window=r + 1), rel=1e-12)
    # radius 0 on equal lengths is the Euclidean distance
    assert float(dtw(x, y, global_constraint="sakoe_chiba", sakoe_chiba_radius=0)) == pytest.approx(
        np.linalg.norm(x - y)
    )


def test_cdist_matches_tslearn_and_dtaidistance():
    rng = np.random.default_rng(2)
    xs = rng.normal(size=(12, 30, 2))
    ys = rng.normal(size=(5, 24, 2))
    np.testing.assert_allclose(cdist_dtw(xs).numpy(), tm.cdist_dtw(xs), rtol=1e-12)
    np.testing.assert_allclose(cdist_dtw(xs, ys).numpy(), tm.cdist_dtw(xs, ys), rtol=1e-12)
    np.testing.assert_allclose(
        cdist_dtw(xs, ys, backend="torch").numpy(), tm.cdist_dtw(xs, ys), rtol=1e-12
    )
    uni = rng.normal(size=(8, 40))
    np.testing.assert_allclose(
        cdist_dtw(uni[:, :, None]).numpy(), dtai.distance_matrix_fast(uni), rtol=1e-12, atol=1e-12
    )
    ref = tm.cdist_dtw(xs, global_constraint="sakoe_chiba", sakoe_chiba_radius=2)
    ours = cdist_dtw(xs, global_constraint="sakoe_chiba", sakoe_chiba_radius=2)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12)


def test_other_metrics_sum_the_local_cost():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 3)), rng.normal(size=(11, 3))
    xt, yt = torch.tensor(x), torch.tensor(y)
    for metric in ("euclidean", "cityblock", "cosine"):
        cost = pairwise_cost(xt[None], yt[None], metric)[0].numpy()
        _path, value = dtw_path(x, y, metric=metric)
        # the value is the plain sum along the path, and no path is cheaper: compare with a loop
        r = np.full((10, 12), np.inf)
        r[0, 0] = 0
        for i in range(1, 10):
            for j in range(1, 12):
                r[i, j] = cost[i - 1, j - 1] + min(r[i - 1, j - 1], r[i - 1, j], r[i, j - 1])
        assert float(value) == pytest.approx(r[9, 11], rel=1e-12)
        assert float(dtw(x, y, metric=metric)) == pytest.approx(r[9, 11], rel=1e-12)
        assert float(dtw(x, y, metric=metric, backend="torch")) == pytest.approx(
            r[9, 11], rel=1e-12
        )
    l1 = dtw(x, y, metric=lambda a, b: torch.cdist(a, b, p=1))
    assert float(l1) == pytest.approx(float(dtw(x, y, metric="cityblock")))


def test_variable_lengths_equal_per_pair_calls():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 15, 2, generator=g, dtype=torch.float64)
    y = torch.randn(4, 12, 2, generator=g, dtype=torch.float64)
    xl, yl = torch.tensor([15, 3, 9, 1]), torch.tensor([12, 12, 5, 7])
    per_pair = torch.stack([dtw(x[i, : xl[i]], y[i, : yl[i]]) for i in range(4)])
    for backend in ("numba", "torch"):
        got = dtw(x, y, x_lengths=xl, y_lengths=yl, backend=backend)
        torch.testing.assert_close(got, per_pair)
    mask = torch.arange(15)[None] < xl[:, None]
    torch.testing.assert_close(dtw(x, y, x_mask=mask, y_lengths=yl), per_pair)
    cd = cdist_dtw(x, y, x_lengths=xl, y_lengths=yl)
    assert float(cd[1, 2]) == pytest.approx(float(dtw(x[1, :3], y[2, :5])))


def test_gradient_is_that_of_the_optimal_path():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(8, 2, generator=g, dtype=torch.float64)
    for backend in ("numba", "torch"):
        (gx,) = torch.autograd.grad(dtw(x, y, backend=backend), x)
        path, value = dtw_path(x.detach(), y)
        # d sqrt(sum_path |x_i - y_j|^2) / dx_i = sum_{j: (i, j) on path} (x_i - y_j) / value
        ref = torch.zeros_like(x)
        for i, j in path.tolist():
            ref[i] += (x.detach()[i] - y[j]) / value
        torch.testing.assert_close(gx, ref)


def test_identical_series_have_zero_value_and_finite_gradient():
    x = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    value = dtw(x, x.detach())
    assert float(value.detach()) == 0.0
    (gx,) = torch.autograd.grad(value, x)
    assert torch.isfinite(gx).all()


def test_infeasible_itakura_gives_inf_and_path_raises():
    x, y = np.zeros(3), np.zeros(20)
    assert float(dtw(x, y, global_constraint="itakura", itakura_max_slope=1.5)) == float("inf")
    assert float(
        dtw(x, y, global_constraint="itakura", itakura_max_slope=1.5, backend="torch")
    ) == float("inf")
    with pytest.raises(ValueError, match="admits no warping path"):
        dtw_path(x, y, global_constraint="itakura", itakura_max_slope=1.5)


def test_subsequence_matches_tslearn_and_brute_force():
    rng = np.random.default_rng(6)
    q, s = rng.normal(size=(6, 2)), rng.normal(size=(30, 2))
    match = subsequence_dtw(q, s)
    ref_path, ref_value = tm.dtw_subsequence_path(q, s)
    assert match.path.tolist() == [list(p) for p in ref_path]
    assert float(match.value) == pytest.approx(ref_value, rel=1e-12)
    brute = min((naive_dtw(q, s[a:b]), a, b) for a in range(30) for b in range(a + 1, 31))
    assert float(match.value) == pytest.approx(brute[0], rel=1e-12)
    assert float(dtw(q, s[match.start : match.end])) == pytest.approx(brute[0], rel=1e-12)


def test_float32_inputs_keep_their_dtype():
    x = torch.randn(3, 10, 2)
    y = torch.randn(3, 7, 2)
    assert dtw(x, y).dtype == torch.float32
    assert dtw(x, y, backend="torch").dtype == torch.float32


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: dtw(np.zeros(0), np.zeros(3)), "x is an empty series"),
        (lambda: dtw(np.zeros((4, 2)), np.zeros((4, 3))), "same number of features"),
        (lambda: dtw(np.array([0.0, np.nan]), np.zeros(3)), "x contains NaN"),
        (lambda: dtw(np.zeros(3), np.array([np.inf])), "y contains NaN or Inf"),
        (lambda: dtw(np.zeros((2, 4, 1)), np.zeros((3, 4, 1))), "same number of series"),
        (lambda: dtw(np.zeros(3), np.zeros(3), global_constraint="band"), "global_constraint"),
        (
            lambda: dtw(
                np.zeros(3), np.zeros(3), global_constraint="sakoe_chiba", sakoe_chiba_radius=-1
            ),
            "sakoe_chiba_radius",
        ),
        (
            lambda: dtw(
                np.zeros(3), np.zeros(3), global_constraint="itakura", itakura_max_slope=0.5
            ),
            "itakura_max_slope",
        ),
        (lambda: dtw(np.zeros(3), np.zeros(3), sakoe_chiba_radius=2), "without a matching"),
        (lambda: dtw(np.zeros(3), np.zeros(3), metric="chebyshev"), "metric must be one of"),
        (lambda: dtw(np.zeros(3), np.zeros(3), backend="cuda"), "backend must be one of"),
        (
            lambda: dtw(np.zeros((2, 4, 1)), np.zeros((2, 4, 1)), x_lengths=[4, 5]),
            "at most the padded",
        ),
        (lambda: dtw(np.zeros((2, 4, 1)), np.zeros((2, 4, 1)), x_lengths=[4, 0]), "empty series"),
        (lambda: dtw(np.zeros((0, 4, 1)), np.zeros((0, 4, 1))), "empty batch"),
        (lambda: dtw(np.zeros(3), np.zeros(3), x_lengths=[3]), "apply to batches only"),
        (lambda: dtw(np.array(["a", "b"]), np.zeros(3)), "must be numeric"),
        (lambda: cdist_dtw(np.zeros((2, 4, 1)), y_lengths=[1, 2]), "y_lengths given without y"),
        (
            lambda: dtw(
                np.zeros((2, 4, 1)),
                np.zeros((2, 4, 1)),
                x_mask=torch.tensor([[1, 0, 1, 0]] * 2).bool(),
            ),
            "prefix",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
