"""DTW, soft-DTW and Sinkhorn against tslearn, dtaidistance and POT, measured in one run.

    python benchmarks/bench_temporal.py            # every case
    python benchmarks/bench_temporal.py --only sinkhorn

Cases (the issue's targets): DTW of one pair of length 1,000 (1-D) against dtaidistance's C;
all pairs among 200 series of length 200 against dtaidistance's parallel C (and tslearn);
soft-DTW loss forward + backward on 64 pairs of length 200 (1-D and 20-D) against tslearn's
``SoftDTWLossPyTorch``; Sinkhorn on 2,000 x 2,000 at reg 0.01 (alignfuse's stabilised
scaling-domain default and its log domain) against POT's plain ``sinkhorn`` and
``sinkhorn_log``, with the same stopping rule (column-marginal L2 error <= 1e-9, checked every
10 iterations) and for a fixed 200 iterations.
Each time is the best of ``--repeat`` runs after one warm-up run; values are compared.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from alignfuse.bench.report import machine


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()  # warm-up (and numba compilation)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def report(name: str, ours: float, peer_name: str, peer: float) -> None:
    print(
        f"{name}: alignfuse {ours * 1e3:.2f} ms, {peer_name} {peer * 1e3:.2f} ms -> {peer / ours:.2f}x"
    )


def bench_dtw(repeat: int) -> None:
    from dtaidistance import dtw as dtai

    from alignfuse.temporal import dtw

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=1000), rng.normal(size=1000)
    t_ours, v_ours = best(lambda: dtw(x, y), repeat)
    t_dtai, v_dtai = best(lambda: dtai.distance_fast(x, y), repeat)
    report("dtw, one pair of length 1,000", t_ours, "dtaidistance C", t_dtai)
    print(f"  values: {float(v_ours):.12f} vs {v_dtai:.12f}")


def bench_cdist(repeat: int) -> None:
    import tslearn.metrics as tm
    from dtaidistance import dtw as dtai

    from alignfuse.temporal import cdist_dtw

    rng = np.random.default_rng(1)
    xs = rng.normal(size=(200, 200))
    t_ours, d_ours = best(lambda: cdist_dtw(xs[:, :, None]), repeat)
    t_dtai, d_dtai = best(lambda: dtai.distance_matrix_fast(xs, parallel=True), repeat)
    t_ts, d_ts = best(lambda: tm.cdist_dtw(xs[:, :, None], n_jobs=-1), max(1, repeat // 2))
    report("cdist_dtw, 200 series of length 200", t_ours, "dtaidistance parallel C", t_dtai)
    report("cdist_dtw, 200 series of length 200", t_ours, "tslearn (n_jobs=-1)", t_ts)
    diff = max(np.abs(d_ours.numpy() - d_dtai).max(), np.abs(d_ours.numpy() - d_ts).max())
    print(f"  max |difference| {diff:.2e}")


def bench_soft_dtw(repeat: int) -> None:
    from tslearn.metrics import SoftDTWLossPyTorch

    from alignfuse.temporal import SoftDTWLoss

    for d in (1, 20):
        g = torch.Generator().manual_seed(d)
        x = torch.randn(64, 200, d, generator=g)
        y = torch.randn(64, 200, d, generator=g)
        ours, peer = SoftDTWLoss(gamma=0.1, reduction="none"), SoftDTWLossPyTorch(gamma=0.1)

        def step(fn: Any, x: torch.Tensor = x, y: torch.Tensor = y) -> tuple[float, torch.Tensor]:
            xr = x.clone().requires_grad_(True)
            loss = fn(xr, y).mean()
            loss.backward()
            return float(loss.detach()), xr.grad  # type: ignore[return-value]

        t_ours, (l_ours, g_ours) = best(lambda ours=ours: step(ours), repeat)
        t_peer, (l_peer, g_peer) = best(lambda peer=peer: step(peer), repeat)
        report(f"SoftDTWLoss fwd+bwd, 64 pairs x 200, {d}-D", t_ours, "tslearn", t_peer)
        rel = abs(l_ours - l_peer) / abs(l_peer)
        grel = float((g_ours - g_peer).norm() / g_peer.norm())
        # tslearn rounds its accumulated matrix through float32 (torch.Tensor(...)), which
        # dominates the gradient difference; ours is float64 inside
        print(f"  loss relative difference {rel:.1e}, gradient relative L2 difference {grel:.1e}")


def bench_sinkhorn(repeat: int) -> None:
    # the cases of run_all.py (stabilised and log-domain Sinkhorn against POT's plain and
    # log solvers, to a tolerance and for a fixed 200 iterations)
    from run_all import case_sinkhorn_fixed, case_sinkhorn_tol, measure

    for make in (case_sinkhorn_tol, case_sinkhorn_fixed):
        res = measure(make(), repeat)
        print(f"{res['title']}: alignfuse {res['alignfuse_median_s'] * 1e3:.1f} ms (median)")
        for peer, p in res["peers"].items():
            print(
                f"  {peer}: {p['median_s'] * 1e3:.1f} ms -> {p['ratio']:.2f}x; "
                f"{res['agreement_measure']} {p['agreement']:.2e}"
            )


CASES = {
    "dtw": bench_dtw,
    "cdist": bench_cdist,
    "soft_dtw": bench_soft_dtw,
    "sinkhorn": bench_sinkhorn,
}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", choices=sorted(CASES), action="append")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    print(f"machine: {machine()}, torch {torch.__version__}")
    for name in args.only or list(CASES):
        CASES[name](args.repeat)


if __name__ == "__main__":
    main()
