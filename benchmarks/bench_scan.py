"""SCAN scoring: the batched, chunked scorer against the original per-caption evaluation loop.

    python benchmarks/bench_scan.py                      # 1,000 images x 36 regions, 5,000 captions x 12 words, d 1,024
    python benchmarks/bench_scan.py --captions 1000      # quicker
    python benchmarks/bench_scan.py --slices 1           # one timed call of each

The loop follows the evaluation of the SCAN authors: for each caption, the caption is
repeated for every image, each word attends to the regions (explicit attended vectors),
cosine relevance, LSE pooling (t2i, lambda_1 = 9, lambda_2 = 6). Both run in float32 in the
same process, the captions in slices scored by each in turn (this VM's speed drifts over
minutes); the scores are compared, and where they differ most, both are compared with
float64; peak memory is the process's peak RSS after alignfuse's one call on all captions.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import resource
import time

import torch
import torch.nn.functional as F


def per_caption_loop(
    regions: torch.Tensor, words: torch.Tensor, l1: float = 9.0, l2: float = 6.0
) -> torch.Tensor:
    n_img = regions.shape[0]
    out = torch.empty(n_img, words.shape[0])
    for c in range(words.shape[0]):
        cap = words[c : c + 1].repeat(n_img, 1, 1)  # (I, W, d)
        attn = torch.bmm(regions, cap.transpose(1, 2))  # (I, R, W) raw dot products
        attn = attn.clamp_min(0)
        attn = attn / (
            attn.pow(2).sum(2, keepdim=True).sqrt() + 1e-8
        )  # the authors' l2norm, over words
        attn = torch.softmax(attn.transpose(1, 2) * l1, dim=2)  # (I, W, R) over regions
        ctx = torch.bmm(attn, regions)  # (I, W, d) attended region vectors
        rel = F.cosine_similarity(cap, ctx, dim=2)  # (I, W)
        out[:, c] = torch.logsumexp(rel * l2, dim=1) / l2
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--captions", type=int, default=5000)
    p.add_argument("--regions", type=int, default=36)
    p.add_argument("--words", type=int, default=12)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument(
        "--slices", type=int, default=10, help="caption slices timed alternately (ours, loop)"
    )
    args = p.parse_args()
    from alignfuse._matmul import uses_onednn
    from alignfuse.interaction import SCAN

    print(
        f"machine: {platform.platform()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    g = torch.Generator().manual_seed(0)
    # l2-normalised features, as SCAN's encoders output
    regions = F.normalize(torch.randn(args.images, args.regions, args.dim, generator=g), dim=-1)
    words = F.normalize(torch.randn(args.captions, args.words, args.dim, generator=g), dim=-1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    scan = SCAN("t2i", "lse")
    with torch.no_grad():
        print(f"region-word products through oneDNN: {uses_onednn(regions[0], words[0])}")
        scan(regions[:8], words[:8])  # warm-up
        t0 = time.perf_counter()
        ours = scan(regions, words)
        t_one = time.perf_counter() - t0
        peak_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        per_caption_loop(regions[:8], words[:8])
        # the same captions scored slice by slice, ours then the loop, so that a change of
        # this VM's speed during the run falls on both alike (ours re-prepares the images
        # for every slice: counted against it)
        ref = torch.empty_like(ours)
        t_ours = t_loop = 0.0
        bounds = torch.linspace(0, args.captions, args.slices + 1).long().tolist()
        for lo, hi in itertools.pairwise(bounds):
            t0 = time.perf_counter()
            scan(regions, words[lo:hi])
            t_ours += time.perf_counter() - t0
            t0 = time.perf_counter()
            ref[:, lo:hi] = per_caption_loop(regions, words[lo:hi])
            t_loop += time.perf_counter() - t0
        # the pairs where the two float32 results differ most, against float64
        diff = (ours - ref).abs()
        worst = diff.flatten().topk(20).indices.tolist()
        err_ours = err_loop = 0.0
        for k in worst:
            i, j = divmod(k, args.captions)
            exact = float(scan(regions[i : i + 1].double(), words[j : j + 1].double()))
            err_ours = max(err_ours, abs(float(ours[i, j]) - exact))
            err_loop = max(err_loop, abs(float(ref[i, j]) - exact))
    print(
        f"{args.images} images x {args.regions} regions vs {args.captions} captions x {args.words} words, d {args.dim}:"
    )
    print(
        f"  alignfuse SCAN, one call (chunks {scan.chunk_images} x {scan.chunk_captions}): "
        f"{t_one:.2f} s, peak RSS {peak_ours:.2f} GB (inputs {base:.2f} GB)"
    )
    print(f"  in {args.slices} slices alternating with the loop: alignfuse {t_ours:.2f} s")
    print(
        f"  per-caption loop:                  {t_loop:.2f} s -> alignfuse is {t_loop / t_ours:.1f}x faster"
        f" (against the one call: {t_loop / t_one:.1f}x)"
    )
    print(
        f"  |score difference|: max {float(diff.max()):.2e}, median {float(diff.median()):.2e};"
        f" on the 20 most different pairs, against float64: alignfuse {err_ours:.2e},"
        f" loop {err_loop:.2e}"
    )


if __name__ == "__main__":
    main()
