"""Greedy captioning with the key-value cache against re-running the model on the whole
sequence at each step (the captioner of the ``captioning`` suite, untrained).

    python benchmarks/bench_generate.py                 # 1,000 images, batches of 256, 16 words
    python benchmarks/bench_generate.py --images 256 --words 32

Both decode the same images in the same process, batch by batch in turn (this VM's speed
drifts over minutes), and must give the same captions. The model is the suite's: the CNN's
8 x 8 region tokens through the MLP projector as the prefix of a 2-layer, 128-d causal
Transformer (4 heads) over a 43-token vocabulary of shape words; untrained, so no caption
ends early and every batch runs all ``--words`` steps.
"""

from __future__ import annotations

import argparse
import time

import torch

from alignfuse.bench.report import machine
from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.models import build_prefix_lm

VOCAB = (
    "a an the one two three four five small large big tiny red green blue yellow orange "
    "purple white gray circle square triangle star cross diamond hexagon heart above below "
    "left right of next to and among objects with in on"
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--words", type=int, default=16, help="steps of greedy decoding")
    args = p.parse_args()
    torch.manual_seed(0)
    tok = Tokenizer.build([VOCAB])
    model = build_prefix_lm(tok, max_len=args.words).eval()
    images = torch.rand(args.images, 3, 64, 64)
    print(f"machine: {machine()}, torch {torch.__version__}")
    print(f"{args.images} images, batches of {args.batch}, {args.words} steps")
    times = {True: 0.0, False: 0.0}
    same = True
    with torch.inference_mode():
        model.generate(images[:8])  # warm-up
        for i in range(0, args.images, args.batch):
            batch = images[i : i + args.batch]
            outs = {}
            for cached in (True, False):
                t0 = time.perf_counter()
                outs[cached] = model.generate(batch, use_cache=cached)
                times[cached] += time.perf_counter() - t0
            same &= outs[True] == outs[False]
            words = sum(len(c.split()) for c in outs[True])
    print(f"cached:   {times[True]:.2f} s")
    print(f"uncached: {times[False]:.2f} s -> cache is {times[False] / times[True]:.2f}x faster")
    print(f"same captions: {same} (last batch: {words} words)")


if __name__ == "__main__":
    main()
