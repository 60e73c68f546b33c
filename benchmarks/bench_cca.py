"""CCA.fit against scikit-learn's CCA, and Nystrom KCCA at scale, measured in one run.

    python benchmarks/bench_cca.py                # X 20,000 x 256, Y 20,000 x 128, 32 components
    python benchmarks/bench_cca.py --kcca-n 100000

numpy's OpenBLAS picks its kernels by processor unless OPENBLAS_CORETYPE names one: on a
machine that pins an older kernel (here: Haswell), run it with both overrides unset in that
command alone, ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/...``; the
kernel in use is printed first. Both libraries run on the same numpy.

scikit-learn's CCA (iterative NIPALS) runs with its defaults (max_iter=500, tol=1e-6) and
scale=False; the canonical correlations of both are printed side by side.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def views(n: int, p: int, q: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 16))
    x = z @ rng.normal(size=(16, p)) + rng.normal(size=(n, p))
    y = z @ rng.normal(size=(16, q)) + rng.normal(size=(n, q))
    return x, y


def blas_kernels() -> str:
    """numpy's BLAS library, its kernel (architecture) and thread count, via threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    found = [
        f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} kernels, "
        f"{i.get('num_threads')} threads"
        for i in threadpool_info()
        if i.get("user_api") == "blas" and "numpy" in i.get("filepath", "")
    ]
    overrides = {
        k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ
    }
    return "; ".join(found or ["not found"]) + (f" (set here: {overrides})" if overrides else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--repeat", type=int, default=9, help="warm calls of each CCA timed")
    p.add_argument("--kcca-n", type=int, default=0, help="also fit Nystrom KCCA on this many rows")
    p.add_argument("--kcca-dims", type=int, nargs=2, default=[64, 64], help="its two views' widths")
    p.add_argument("--kcca-k", type=int, default=10, help="its number of components")
    args = p.parse_args()
    from alignfuse.bench.report import machine
    from alignfuse.correlation import CCA, KCCA

    print(f"machine: {machine()}")
    print(f"numpy {np.__version__}, BLAS: {blas_kernels()}")
    x, y = views(args.n, 256, 128)
    t0 = time.perf_counter()
    ours = CCA(n_components=args.k).fit(x, y)
    t_ours = time.perf_counter() - t0
    print(f"alignfuse CCA.fit: {t_ours:.3f} s")
    try:
        from cca_zoo.linear import CCA as ZooCCA
    except ImportError:
        print("cca-zoo not installed: skipped")
    else:
        t0 = time.perf_counter()
        zoo = ZooCCA(n_components=args.k).fit((x, y))
        t_zoo = time.perf_counter() - t0
        zx, zy = zoo.transform((x, y))
        zoo_corr = np.array([abs(np.corrcoef(zx[:, i], zy[:, i])[0, 1]) for i in range(args.k)])
        print(
            f"cca-zoo CCA.fit: {t_zoo:.3f} s -> alignfuse is {t_zoo / t_ours:.2f}x faster; "
            f"max |correlation difference| {np.abs(zoo_corr - ours.correlations_).max():.2e}"
        )
        # warm: the median of --repeat further calls of each, alternating
        warm: dict[str, list[float]] = {"alignfuse": [], "cca-zoo": []}
        for _ in range(args.repeat):
            for name, fit in (
                ("alignfuse", lambda: CCA(n_components=args.k).fit(x, y)),
                ("cca-zoo", lambda: ZooCCA(n_components=args.k).fit((x, y))),
            ):
                t0 = time.perf_counter()
                fit()
                warm[name].append(time.perf_counter() - t0)
        w_ours, w_zoo = (float(np.median(warm[k])) for k in ("alignfuse", "cca-zoo"))
        print(
            f"warm (median of {args.repeat}): alignfuse {w_ours * 1e3:.1f} ms, cca-zoo {w_zoo * 1e3:.1f} ms "
            f"-> {w_zoo / w_ours:.2f}x"
        )
    if not args.skip_sklearn:
        from sklearn.cross_decomposition import CCA as SkCCA

        t0 = time.perf_counter()
        sk = SkCCA(n_components=args.k, scale=False).fit(x, y)
        t_sk = time.perf_counter() - t0
        xs, ys = sk.transform(x, y)
        sk_corr = np.array([abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(args.k)])
        diff = np.abs(sk_corr - ours.correlations_).max()
        print(f"scikit-learn CCA.fit: {t_sk:.1f} s -> alignfuse is {t_sk / t_ours:.0f}x faster")
        print(f"max |correlation difference| over {args.k} components: {diff:.2e}")
        print(f"first correlations  ours: {np.round(ours.correlations_[:4], 5)}")
        print(f"                 sklearn: {np.round(sk_corr[:4], 5)}")
    if args.kcca_n:
        rng = np.random.default_rng(1)
        t = rng.uniform(-3, 3, size=(args.kcca_n + 2000, 1))
        # a nonlinear shared signal in 2 of px and 1 of py features, the rest weaker noise
        noise, (px, py) = 0.2, args.kcca_dims
        xk = np.hstack([np.cos(t), np.sin(t), noise * rng.normal(size=(len(t), px - 2))])
        yk = np.hstack([np.sin(2 * t), noise * rng.normal(size=(len(t), py - 1))])
        xtr, ytr, xte, yte = xk[:-2000], yk[:-2000], xk[-2000:], yk[-2000:]
        kw = dict(n_components=args.kcca_k, kernel="rbf", reg_x=1e-2, reg_y=1e-2)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        ny = KCCA(**kw, method="nystrom", n_landmarks=1000).fit(xtr, ytr)
        t_ny = time.perf_counter() - t0
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024**2
        held = np.abs(ny.score(xte, yte))
        sub = 3000
        ex = KCCA(**kw).fit(xtr[:sub], ytr[:sub])
        held_ex = np.abs(ex.score(xte, yte))
        ny_sub = KCCA(**kw, method="nystrom", n_landmarks=1000).fit(xtr[:sub], ytr[:sub])
        held_ny_sub = np.abs(ny_sub.score(xte, yte))
        print(
            f"Nystrom KCCA n={args.kcca_n} ({px} and {py} features, {args.kcca_k} components, "
            "RBF, 1000 landmarks): "
            f"{t_ny:.1f} s, +{peak:.2f} GB peak; held-out correlations {np.round(held[:3], 4)}"
        )
        print(
            f"on a subsample of {sub}: exact {np.round(held_ex[:3], 4)}, Nystrom "
            f"{np.round(held_ny_sub[:3], 4)}, max difference over the {args.kcca_k} components "
            f"{np.abs(held_ex - held_ny_sub).max():.4f}"
        )


if __name__ == "__main__":
    main()
