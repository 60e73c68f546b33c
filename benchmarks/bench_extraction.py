"""Feature extraction throughput of the pretrained EfficientNet-Lite image tower: the peer
package (``efficientnet-lite-pytorch``, same weights), alignfuse's modules as they train,
and the path a feature cache is filled with (:meth:`EfficientNetLite.precompute`: BatchNorm
folded into the frozen convolutions, TensorFlow ``SAME`` padding without padded copies),
measured in one run on the same images.

    python benchmarks/bench_extraction.py
    python benchmarks/bench_extraction.py --variant lite0 --images 512 --batch 64

The peer and the module path run on the network's preprocessed input (224 x 224 for Lite0);
``precompute`` starts from ``uint8`` 128 x 128 images (as the clipart suite stores them) and
includes resizing, normalisation, input digests and writing the cache file, so its figure
is what a user waits for. Each rate is the median of ``--repeats`` timed passes after a
warm-up; the largest difference of the final feature map to the peer's is printed.
"""

from __future__ import annotations

import argparse
import platform
import tempfile

import numpy as np
import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="lite0", choices=["lite0", "lite1", "lite2"])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    import efficientnet_lite_pytorch as peer_pkg
    from bench_export import median_rate

    from alignfuse.encoders.efficientnet import EfficientNetLite, _package_weights
    from alignfuse.engine.evaluate import images_to_tensor

    torch.manual_seed(0)
    ours = EfficientNetLite(args.variant).eval()
    peer = peer_pkg.EfficientNet.from_pretrained(
        f"efficientnet-{args.variant}", weights_path=str(_package_weights(args.variant))
    ).eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, 128, 128, 3), dtype=np.uint8)
    batches = [
        images_to_tensor(images[i : i + args.batch]) for i in range(0, len(images), args.batch)
    ]
    inputs = [ours.preprocess(b) for b in batches]  # the network's own input, for both

    def peer_pass() -> None:
        with torch.inference_mode():
            for x in inputs:
                peer.extract_features(x)

    def module_pass() -> None:
        with torch.inference_mode():
            for x in inputs:
                x = torch.nn.functional.relu6(ours._bn0(ours._conv_stem(x)))
                for block in ours._blocks:
                    x = block(x)
                ours._bn1(ours._conv_head(x))

    def precompute_pass() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            tower = EfficientNetLite(args.variant, cache_dir=tmp).eval()
            tower.load_state_dict(ours.state_dict())
            assert tower.precompute(lambda: iter(batches)) == len(images)

    with torch.inference_mode():
        ref = peer.extract_features(inputs[0])
        mine = ours.feature_map(batches[0])
    n = len(images)
    rates = {
        "peer (efficientnet-lite-pytorch)": median_rate(peer_pass, n, args.repeats),
        "alignfuse modules (training path)": median_rate(module_pass, n, args.repeats),
        "alignfuse precompute (cache fill)": median_rate(precompute_pass, n, args.repeats),
    }
    base = rates["peer (efficientnet-lite-pytorch)"]
    print(
        f"EfficientNet-{args.variant.title()}, {n} images, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    print(f"largest difference of the feature map to the peer's: {(ref - mine).abs().max():.2e}")
    print("| path | images / s | vs peer |")
    print("|---|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
