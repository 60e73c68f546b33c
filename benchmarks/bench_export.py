"""Inference throughput of an exported dual encoder: eager PyTorch, TorchScript and ONNX
Runtime, measured in one run on the same inputs (the default suite's CNN + BiGRU shape).

    python benchmarks/bench_export.py
    python benchmarks/bench_export.py --batch 256 --repeats 5

The towers are the default configuration's (embed_dim 256, CNN width 24, BiGRU), randomly
initialised (throughput does not depend on the weights); images are 64 x 64, captions
shapes-style sentences. Each figure is the median of ``--repeats`` timed passes after one
warm-up; the largest difference to eager PyTorch is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def median_rate(fn, n: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    import onnxruntime as ort

    from alignfuse.encoders.tokenizer import Tokenizer
    from alignfuse.export import export_model
    from alignfuse.models.dual_encoder import build_dual_encoder

    words = [
        "a",
        "red",
        "green",
        "blue",
        "circle",
        "square",
        "star",
        "triangle",
        "above",
        "below",
        "left",
        "of",
        "right",
        "two",
        "three",
    ]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(args.batch)]
    torch.manual_seed(0)
    model = build_dual_encoder(Tokenizer.build(texts)).eval()
    images = torch.randn(args.batch, 3, 64, 64)
    prep = model.prepare_text(texts)
    out = Path(tempfile.mkdtemp())
    export_model(model, out / "onnx", "onnx")
    export_model(model, out / "ts", "torchscript")
    img_s = ort.InferenceSession(
        str(out / "onnx" / "image.onnx"), providers=["CPUExecutionProvider"]
    )
    txt_s = ort.InferenceSession(
        str(out / "onnx" / "text.onnx"), providers=["CPUExecutionProvider"]
    )
    img_ts = torch.jit.load(str(out / "ts" / "image.pt"))
    txt_ts = torch.jit.load(str(out / "ts" / "text.pt"))
    feed = {k: v.numpy() for k, v in prep.items()}
    with torch.inference_mode():
        ref_img, ref_txt = model.encode_image(images), model.encode_text(prep)
        rows = [
            ("image", "eager", lambda: model.encode_image(images), ref_img),
            ("image", "torchscript", lambda: img_ts(images), ref_img),
            (
                "image",
                "onnxruntime",
                lambda: torch.from_numpy(img_s.run(None, {"images": images.numpy()})[0]),
                ref_img,
            ),
            ("text", "eager", lambda: model.encode_text(prep), ref_txt),
            ("text", "torchscript", lambda: txt_ts(prep["ids"], prep["lengths"]), ref_txt),
            ("text", "onnxruntime", lambda: torch.from_numpy(txt_s.run(None, feed)[0]), ref_txt),
        ]
        base: dict[str, float] = {}
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; onnxruntime {ort.__version__}"
        )
        print("| tower | runtime | items/s | vs eager | max abs diff |")
        print("|---|---|---|---|---|")
        for tower, runtime, fn, ref in rows:
            rate = median_rate(fn, args.batch, args.repeats)
            base.setdefault(tower, rate)
            diff = float((fn() - ref).abs().max())
            print(f"| {tower} | {runtime} | {rate:,.0f} | {rate / base[tower]:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
