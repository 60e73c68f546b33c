"""Plain vs chunked symmetric InfoNCE: forward + backward time and peak memory.

    python benchmarks/bench_info_nce.py                 # batch 4096 x 512: plain vs chunked
    python benchmarks/bench_info_nce.py --large 65536   # also the chunked loss at batch 65,536

Each configuration runs in its own subprocess, so its peak resident memory (ru_maxrss) is
its own; the figure reported is the increase over the process after creating the inputs.
Times are the median of --repeats runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from alignfuse.bench.report import machine


def _child(n: int, d: int, mode: str, chunk: int, repeats: int) -> dict[str, float]:
    import torch

    from alignfuse.losses import info_nce

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, d, generator=g).requires_grad_(True)
    b = torch.randn(n, d, generator=g).requires_grad_(True)
    t = torch.tensor(2.0, requires_grad=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        loss = info_nce(a, b, t, chunk_size=chunk if mode == "chunked" else None)
        loss.backward()
        if i:
            times.append(time.perf_counter() - t0)
        a.grad = b.grad = t.grad = None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": statistics.median(times),
        "peak_mb": (peak - base) / 1024,
        "loss": float(loss),
    }


def run(n: int, d: int, mode: str, chunk: int, repeats: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps([n, d, mode, chunk, repeats])],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--large", type=int, default=0, help="also run the chunked loss at this batch")
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(*json.loads(args.child))))
        return
    import torch

    print(f"machine: {machine()}, torch {torch.__version__}")
    plain = run(args.n, args.dim, "plain", 0, args.repeats)
    print(f"plain    N={args.n} D={args.dim}: {plain['seconds']:.3f} s, +{plain['peak_mb']:.0f} MB")
    for chunk in sorted({args.chunk, 1024}):
        c = run(args.n, args.dim, "chunked", chunk, args.repeats)
        print(
            f"chunked  N={args.n} D={args.dim} chunk={chunk}: {c['seconds']:.3f} s "
            f"({c['seconds'] / plain['seconds']:.2f}x plain), +{c['peak_mb']:.0f} MB "
            f"({c['peak_mb'] / plain['peak_mb']:.2f}x plain); |loss diff| "
            f"{abs(c['loss'] - plain['loss']):.1e}"
        )
    if args.large:
        big = run(args.large, args.dim, "chunked", args.chunk, 1)
        logits_gb = args.large**2 * 4 / 1e9
        print(
            f"chunked  N={args.large} D={args.dim} chunk={args.chunk}: {big['seconds']:.1f} s, "
            f"+{big['peak_mb'] / 1024:.2f} GB peak (the plain logits alone: {logits_gb:.1f} GB)"
        )


if __name__ == "__main__":
    main()
