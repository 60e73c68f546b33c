"""SCAN scoring: the batched, chunked scorer against the original per-caption evaluation loop.

    python benchmarks/bench_scan.py                      # 1,000 images x 36 regions, 5,000 captions x 12 words, d 1,024
    python benchmarks/bench_scan.py --captions 1000      # quicker

The loop follows the evaluation of the SCAN authors: for each caption, the caption is
repeated for every image, each word attends to the regions (explicit attended vectors),
cosine relevance, LSE pooling (t2i, lambda_1 = 9, lambda_2 = 6). Both run in float32 in the
same process; the scores are compared; peak memory is the process's peak RSS.
"""

from __future__ import annotations

import argparse
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
    args = p.parse_args()
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
        scan(regions[:8], words[:8])  # warm-up
        t0 = time.perf_counter()
        ours = scan(regions, words)
        t_ours = time.perf_counter() - t0
        peak_ours = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        per_caption_loop(regions[:8], words[:8])
        t0 = time.perf_counter()
        ref = per_caption_loop(regions, words)
        t_loop = time.perf_counter() - t0
    print(
        f"{args.images} images x {args.regions} regions vs {args.captions} captions x {args.words} words, d {args.dim}:"
    )
    print(
        f"  alignfuse SCAN (chunks 16 x 64): {t_ours:.2f} s, peak RSS {peak_ours:.2f} GB (inputs {base:.2f} GB)"
    )
    print(
        f"  per-caption loop:                  {t_loop:.2f} s -> alignfuse is {t_loop / t_ours:.1f}x faster"
    )
    print(f"  max |score difference| {float((ours - ref).abs().max()):.2e}")


if __name__ == "__main__":
    main()
