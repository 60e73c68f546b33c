"""Top-k retrieval at scale: alignfuse's exact chunked search against FAISS's exact flat index,
measured in one run (feature extraction throughput: ``bench_extraction.py``).

    python benchmarks/bench_search.py                 # 100,000 x 100,000, dim 256, top 10
    python benchmarks/bench_search.py --n 20000

Search: unit vectors in ``--dim`` dimensions (queries and keys drawn independently); both
backends return the top ``--k`` indices of every query; agreement is the share of equal index
rows. Peak memory is the process's maximum resident set size after each step (the keys and
queries themselves take ``2 n dim 4`` bytes).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def search(n: int, dim: int, k: int) -> None:
    from alignfuse.search import faiss_available, topk

    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    x = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    print(f"inputs: 2 x {n:,} x {dim} float32, peak RSS {peak_mb():.0f} MB")
    t = time.perf_counter()
    s_exact, i_exact = topk(q, x, k=k)
    exact_s = time.perf_counter() - t
    print(f"alignfuse exact chunked (256 MB blocks): {exact_s:.1f} s, peak RSS {peak_mb():.0f} MB")
    if not faiss_available():
        print("faiss not installed: pip install 'alignfuse[search]'")
        return
    t = time.perf_counter()
    s_faiss, i_faiss = topk(q, x, k=k, backend="faiss")
    faiss_s = time.perf_counter() - t
    agree = float((i_exact == i_faiss).all(1).double().mean())
    print(f"faiss IndexFlatIP: {faiss_s:.1f} s, peak RSS {peak_mb():.0f} MB")
    print(
        f"ratio alignfuse / faiss time: {exact_s / faiss_s:.2f}; rows with equal top-{k} "
        f"indices: {100 * agree:.3f}%; max score difference "
        f"{(s_exact - s_faiss).abs().max():.2e}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    args = p.parse_args()
    search(args.n, args.dim, args.k)


if __name__ == "__main__":
    main()
