"""Time the generation of the built-in `shapes` dataset (no cache), serial and in parallel.

    python benchmarks/bench_shapes.py [--n-train 10000] [--repeats 1]

Prints one line per worker count with seconds and images per second, and the speed-up of
the parallel run over the serial one, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import time

from alignfuse.bench.report import machine
from alignfuse.data.shapes import generate_shapes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n-train", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    n_total = args.n_train + 2_000 + 2 * 200
    print(f"machine: {machine()}")
    times = {}
    for workers in (1, os.cpu_count() or 1):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            generate_shapes(n_train=args.n_train, workers=workers)
            best = min(best, time.perf_counter() - t0)
        times[workers] = best
        print(
            f"workers={workers}: {best:.1f} s for {n_total} images ({n_total / best:.0f} images/s)"
        )
    if len(times) > 1:
        w = max(times)
        print(f"parallel speed-up ({w} workers vs 1): {times[1] / times[w]:.2f}x")


if __name__ == "__main__":
    main()
