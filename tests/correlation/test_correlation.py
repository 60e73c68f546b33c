"""The CCA family against scikit-learn and against mathematical facts."""

import numpy as np
import pytest
import torch

import alignfuse
from alignfuse.correlation import CCA, KCCA, PLS, Procrustes, cca_loss


def _views(n=400, p=6, q=4, shared=2, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, shared))
    X = z @ rng.normal(size=(shared, p)) + noise * rng.normal(size=(n, p))
    Y = z @ rng.normal(size=(shared, q)) + noise * rng.normal(size=(n, q))
    return X, Y


@pytest.mark.parametrize(("n", "p", "q", "k"), [(300, 6, 4, 3), (500, 10, 10, 4), (200, 3, 8, 2)])
def test_matches_sklearn_cca_run_to_convergence(n, p, q, k):
    from sklearn.cross_decomposition import CCA as SkCCA

    X, Y = _views(n, p, q, seed=n)
    sk = SkCCA(n_components=k, scale=False, max_iter=20000, tol=1e-14).fit(X, Y)
    xs, ys = sk.transform(X, Y)
    sk_corr = [abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(k)]
    ours = CCA(n_components=k).fit(X, Y)
    assert np.allclose(ours.correlations_, sk_corr, atol=1e-4)
    assert np.allclose(ours.score(X, Y), ours.correlations_, atol=1e-10)


@pytest.mark.parametrize(("n", "p", "q", "k"), [(300, 6, 4, 3), (1000, 30, 20, 10)])
def test_matches_cca_zoo(n, p, q, k):
    cz = pytest.importorskip("cca_zoo.linear")
    X, Y = _views(n, p, q, seed=n + 1)
    zx, zy = cz.CCA(n_components=k).fit((X, Y)).transform((X, Y))
    ref = [np.corrcoef(zx[:, i], zy[:, i])[0, 1] for i in range(k)]
    assert np.allclose(CCA(n_components=k).fit(X, Y).correlations_, ref, atol=1e-6)


def test_identical_views_correlate_perfectly():
    X, _ = _views()
    assert np.allclose(CCA(n_components=4).fit(X, X).correlations_, 1.0)
    assert float(cca_loss(torch.from_numpy(X), torch.from_numpy(X), reg=0.0)) == pytest.approx(-6.0)


def test_ridge_zero_equals_plain_and_ridge_shrinks():
    X, Y = _views(seed=3)
    plain = CCA(n_components=3).fit(X, Y)
    tiny = CCA(n_components=3, reg_x=1e-12, reg_y=1e-12).fit(X, Y)  # covariance path
    assert np.allclose(plain.correlations_, tiny.correlations_, atol=1e-8)
    assert np.allclose(np.abs(plain.transform(X)), np.abs(tiny.transform(X)), atol=1e-5)
    big = CCA(n_components=3, reg_x=10.0, reg_y=10.0).fit(X, Y)
    assert (big.correlations_ < plain.correlations_).all()


def test_invariant_to_invertible_linear_maps():
    X, Y = _views(seed=4)
    rng = np.random.default_rng(9)
    A, B = rng.normal(size=(6, 6)), rng.normal(size=(4, 4))
    base = CCA(n_components=4).fit(X, Y).correlations_
    moved = CCA(n_components=4).fit(X @ A + 3.0, Y @ B - 1.0).correlations_
    assert np.allclose(base, moved, atol=1e-9)


def test_scores_are_uncorrelated_unit_variance():
    X, Y = _views(seed=5)
    zx, zy = CCA(n_components=3).fit_transform(X, Y)
    assert np.allclose(np.cov(zx.T), np.eye(3), atol=1e-8)
    assert np.allclose(np.cov(zy.T), np.eye(3), atol=1e-8)


def test_kcca_linear_kernel_matches_ridge_cca():
    X, Y = _views(n=300, seed=6)
    for reg in (1e-3, 0.5):
        k = KCCA(n_components=3, kernel="linear", reg_x=reg, reg_y=reg).fit(X, Y)
        c = CCA(n_components=3, reg_x=reg, reg_y=reg).fit(X, Y)
        assert np.allclose(k.correlations_, c.correlations_, atol=1e-7)
        zx_k, _ = k.transform(X[:50], Y[:50])
        zx_c, _ = c.transform(X[:50], Y[:50])
        assert np.allclose(np.abs(zx_k), np.abs(zx_c), atol=1e-6)


def _nonlinear(n, seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(-np.pi, np.pi, size=(n, 1))
    X = np.hstack([np.cos(t), np.sin(t)]) + 0.05 * rng.normal(size=(n, 2))
    # sin(2t) = 2 cos t sin t: a product of X's coordinates, linearly uncorrelated with both
    Y = np.hstack([np.sin(2 * t), rng.normal(size=(n, 1))]) + 0.05 * rng.normal(size=(n, 2))
    return X, Y


def test_kcca_rbf_beats_linear_cca_on_nonlinear_signal():
    X, Y = _nonlinear(1200, 0)
    Xt, Yt = _nonlinear(600, 1)
    lin = CCA(n_components=1).fit(X, Y).score(Xt, Yt)[0]
    ker = KCCA(n_components=1, kernel="rbf", gamma=1.0, reg_x=1e-2, reg_y=1e-2).fit(X, Y)
    assert ker.score(Xt, Yt)[0] > lin + 0.3


def test_nystrom_close_to_exact_on_held_out():
    X, Y = _nonlinear(1500, 2)
    Xt, Yt = _nonlinear(800, 3)
    kw = dict(n_components=2, kernel="rbf", gamma=1.0, reg_x=1e-2, reg_y=1e-2)
    exact = KCCA(**kw).fit(X, Y).score(Xt, Yt)
    approx = KCCA(**kw, method="nystrom", n_landmarks=300).fit(X, Y).score(Xt, Yt)
    assert np.abs(np.abs(exact) - np.abs(approx)).max() < 0.02


def test_procrustes_recovers_rotation_and_scale():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 5))
    R, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    Y = 2.5 * X @ R + np.arange(5)
    m = Procrustes(scaling=True).fit(X, Y)
    assert np.allclose(m.rotation_, R, atol=1e-10) and m.scale_ == pytest.approx(2.5)
    assert m.score(X, Y) == pytest.approx(1.0)
    assert np.allclose(m.transform(X), Y)
    with pytest.raises(ValueError, match="same number of features"):
        Procrustes().fit(X, X[:, :3])


def test_pls_matches_sklearn_plssvd():
    from sklearn.cross_decomposition import PLSSVD

    X, Y = _views(seed=8)
    sk = PLSSVD(n_components=3, scale=False).fit(X, Y)
    ours = PLS(n_components=3).fit(X, Y)
    assert np.allclose(np.abs(ours.x_weights_), np.abs(sk.x_weights_), atol=1e-8)
    assert np.allclose(np.abs(ours.y_weights_), np.abs(sk.y_weights_), atol=1e-8)
    zx, _ = ours.transform(X, Y)
    assert np.allclose(np.abs(zx), np.abs(sk.transform(X)), atol=1e-8)


def test_numpy_in_numpy_out_torch_in_torch_out():
    X, Y = _views()
    m = CCA(n_components=2).fit(X, Y)
    assert isinstance(m.transform(X), np.ndarray) and isinstance(m.correlations_, np.ndarray)
    tx, ty = torch.from_numpy(X).float(), torch.from_numpy(Y).float()
    mt = CCA(n_components=2).fit(tx, ty)
    z = mt.transform(tx)
    assert isinstance(z, torch.Tensor) and z.dtype == torch.float32
    assert np.allclose(mt.correlations_.numpy(), m.correlations_, atol=1e-4)
    assert "CCA(n_components=2" in repr(mt)
    # half precision is computed in float32 (torch's CPU linear algebra has no half kernels)
    for dt in (torch.float16, torch.bfloat16):
        mh = CCA(n_components=2).fit(tx.to(dt), ty.to(dt))
        assert mh.correlations_.dtype == torch.float32
        assert np.allclose(mh.correlations_.numpy(), m.correlations_, atol=0.02)


def test_cca_loss_equals_cca_and_gradcheck():
    X, Y = _views(n=200, seed=10)
    a, b = torch.from_numpy(X), torch.from_numpy(Y)
    want = CCA(n_components=3).fit(X, Y).correlations_.sum()
    assert float(cca_loss(a, b, 3, reg=0.0)) == pytest.approx(-want, rel=1e-8)
    a_small = a[:20, :3].clone().requires_grad_(True)
    b_small = b[:20, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, y: cca_loss(x, y, reg=1e-3), (a_small, b_small))
    # a near-singular batch stays finite with the ridge
    dup = torch.cat([a[:10, :2], a[:10, :2]], 1).requires_grad_(True)
    out = alignfuse.create_loss("cca")(dup, b[:10, :2])
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(dup.grad).all()


@pytest.mark.parametrize("est", [CCA(2), KCCA(2), PLS(2)])
def test_bad_inputs(est):
    X, Y = _views()
    with pytest.raises(ValueError, match="same number of rows"):
        est.fit(X, Y[:-1])
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        est.fit(bad, Y)
    with pytest.raises(ValueError, match="n_components"):
        type(est)(n_components=10_000).fit(X, Y)
    with pytest.raises(ValueError, match="2-D"):
        est.fit(X[:, 0], Y)
    with pytest.raises(RuntimeError, match="not fitted"):
        type(est)(n_components=2).transform(X)
    est.fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        est.transform(X[:, :3])


def test_column_means_match_exact_sums_and_catch_every_non_finite():
    import math

    from alignfuse.correlation._base import finite_column_means

    rng = np.random.default_rng(3)
    a = rng.normal(loc=5.0, size=(3001, 7))
    exact = np.array([math.fsum(c) for c in a.T]) / len(a)
    for t in (
        torch.from_numpy(a),
        torch.from_numpy(np.asfortranarray(a)),  # strided: not row-major
        torch.from_numpy(a.astype(np.float32)),
    ):
        tol = 1e-13 if t.dtype == torch.float64 else 1e-5
        assert finite_column_means(t, "X").dtype == t.dtype
        assert np.allclose(finite_column_means(t, "X").numpy(), exact, rtol=tol, atol=0)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[1234, 5] = bad
        with pytest.raises(ValueError, match="Z contains NaN or Inf"):
            finite_column_means(torch.from_numpy(b), "Z")
    # +Inf and -Inf in one column sum to NaN
    b = a.copy()
    b[0, 0], b[1, 0] = np.inf, -np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        finite_column_means(torch.from_numpy(b), "Z")


@pytest.mark.parametrize("m", [1, 5, 32, 33, 100, 257])
def test_recursive_lower_triangular_inverse_matches_a_triangular_solve(m):
    from scipy.linalg import solve_triangular

    from alignfuse.correlation.cca import _inv_lower

    rng = np.random.default_rng(m)
    a = rng.normal(size=(3 * m, m))
    lo = np.linalg.cholesky(a.T @ a)
    inv = _inv_lower(lo)
    assert np.array_equal(inv, np.tril(inv))
    ref = solve_triangular(lo, np.eye(m), lower=True)
    assert np.abs(inv - ref).max() <= 1e-12 * np.abs(ref).max()
    assert np.abs(inv @ lo - np.eye(m)).max() < 1e-12


def test_rank_deficiency_is_a_clear_error_not_nan():
    X, Y = _views()
    X = np.hstack([X, X[:, :1]])  # duplicated column
    with pytest.raises(ValueError, match="rank deficient.*reg_x"):
        CCA(2).fit(X, Y)
    const = np.hstack([Y, np.ones((len(Y), 1))])
    with pytest.raises(ValueError, match="Y is rank deficient"):
        CCA(2).fit(X[:, :6], const)
    ok = CCA(2, reg_x=1e-3).fit(X, Y)
    assert np.isfinite(ok.correlations_).all()
    with pytest.raises(ValueError, match="n_samples - 1"):
        CCA(3).fit(X[:3, :4], Y[:3])


def test_dcca_beats_linear_cca_on_nonlinear_signal():
    from alignfuse.correlation import DCCA

    X, Y = _nonlinear(1500, 0)
    Xt, Yt = _nonlinear(800, 1)
    lin = CCA(n_components=1).fit(X, Y).score(Xt, Yt)[0]
    deep = DCCA(1, hidden=(32, 32), out_dim=2, epochs=30, batch_size=500).fit(X, Y)
    assert deep.score(Xt, Yt)[0] > lin + 0.5
    z = deep.transform(torch.from_numpy(Xt).float())
    assert isinstance(z, torch.Tensor) and z.shape == (800, 1)


def test_dccae_reconstructs_and_resumes_exactly(tmp_path):
    from alignfuse.correlation import DCCAE

    X, Y = _nonlinear(600, 2)
    kw = dict(n_components=1, hidden=(16,), out_dim=2, batch_size=200, recon_weight=1e-2)
    full = DCCAE(epochs=6, **kw).fit(X, Y)
    DCCAE(epochs=3, checkpoint_dir=str(tmp_path), **kw).fit(X, Y)  # interrupted after 3
    resumed = DCCAE(epochs=6, checkpoint_dir=str(tmp_path), **kw).fit(X, Y)
    assert resumed.history_ == pytest.approx(full.history_, rel=1e-9)
    assert np.allclose(resumed.transform(X), full.transform(X))
    assert "p" in full.nets_ and "q" in full.nets_
    with pytest.raises(ValueError, match="recon_weight > 0"):
        DCCAE(recon_weight=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        DCCAE(batch_size=2, out_dim=4, n_components=2).fit(X, Y)


def test_cholesky_and_qr_whitening_agree_and_ill_conditioned_views_use_qr():
    from alignfuse.correlation.cca import _cholesky_fit, _qr_whitener, covariances

    X, Y = _views(n=500, p=8, q=5, seed=12)
    x = torch.from_numpy(X - X.mean(0))
    y = torch.from_numpy(Y - Y.mean(0))
    zx, zy = torch.zeros(8, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    _, _, s = _cholesky_fit(*covariances(x, y, zx, zy), 4)
    qx, _ = _qr_whitener(x, "X", "reg_x")
    qy, _ = _qr_whitener(y, "Y", "reg_y")
    s_qr = torch.linalg.svdvals(qx.T @ qy)[:4]
    assert torch.allclose(s, s_qr, atol=1e-12)
    bad = x.clone()
    bad[:, 0] *= 1e6  # covariance condition number ~1e12
    assert _cholesky_fit(*covariances(bad, y, zx, zy), 4) is None
    # the public estimator still gives the invariant answer through QR
    assert np.allclose(
        CCA(4).fit(bad.numpy(), Y).correlations_, CCA(4).fit(X, Y).correlations_, atol=1e-9
    )


@pytest.mark.parametrize("shift", [0.0, 3.0, 1e4])
@pytest.mark.parametrize("kind", ["cpu", "autograd"])
def test_covariances_from_uncentred_products_equal_centred(shift, kind):
    # float64 covariances skip the centred copies unless the means dwarf the spread
    # (cancellation factor > MAX_CANCEL, here shift 1e4): both routes give the centred result
    from alignfuse.correlation.cca import covariances

    X, Y = _views(n=400, p=7, q=4, seed=3)
    X, Y = X + shift, Y - 2 * shift
    x, y = torch.from_numpy(X), torch.from_numpy(Y)
    if kind == "autograd":  # the torch route (as on a GPU); "cpu" runs the products in numpy
        x.requires_grad_(True)
    got = covariances(x, y, x.detach().mean(0), y.mean(0))
    xc, yc = X - X.mean(0), Y - Y.mean(0)
    want = (xc.T @ xc / 399, xc.T @ yc / 399, yc.T @ yc / 399)
    for g, w in zip(got, want, strict=True):
        assert np.allclose(g.detach().numpy(), w, rtol=1e-10, atol=1e-10 * np.abs(w).max())
    if kind == "cpu":
        # and the fitted model is the same as on centred data
        a = CCA(3).fit(X, Y).correlations_
        b = CCA(3).fit(xc, yc).correlations_
        assert np.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("kind", ["numpy", "autograd"])
def test_zero_canonical_correlations_use_the_full_svd(kind):
    # Y's last columns are exactly uncorrelated (in sample) with every column of X, so the
    # trailing canonical correlations are 0 and U = T V / s is undefined: the top-k routine
    # must fall back to the SVD and still return uncorrelated unit-variance scores
    rng = np.random.default_rng(9)
    n = 300
    X = rng.normal(size=(n, 5))
    xc = X - X.mean(0)
    y0 = X[:, :1] + 0.3 * rng.normal(size=(n, 1))
    r = rng.normal(size=(n, 2))
    r -= r.mean(0)
    r -= xc @ np.linalg.lstsq(xc, r, rcond=None)[0]  # orthogonal to centred X
    Y = np.hstack([y0, r])
    a, b = X, Y
    if kind == "autograd":  # tensors that need grad take the torch route (as on a GPU)
        a, b = torch.from_numpy(X).requires_grad_(True), torch.from_numpy(Y)

    def arr(t):
        return t.detach().numpy() if isinstance(t, torch.Tensor) else t

    cca = CCA(n_components=3).fit(a, b)
    corr = arr(cca.correlations_)
    assert corr[0] > 0.9 and np.allclose(corr[1:], 0, atol=1e-10)
    zx, zy = (arr(z) for z in cca.transform(a, b))
    assert np.allclose(np.cov(zx.T), np.eye(3), atol=1e-8)
    assert np.allclose(np.cov(zy.T), np.eye(3), atol=1e-8)
    assert np.allclose(np.cov(zx.T, zy.T)[:3, 3:], np.diag(corr), atol=1e-8)
