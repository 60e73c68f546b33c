"""Export a trained dual encoder's two towers to ONNX or TorchScript (``alignfuse export``).

A dual encoder (an :class:`~alignfuse.models.protocols.EmbeddingModel`: one unit embedding per
image and per text) exports as two graphs: ``image.<ext>`` maps alignfuse image tensors
``(B, 3, H, W)`` (``(uint8 / 255 - 0.5) / 0.25``) to embeddings, ``text.<ext>`` maps the
tensors of ``model.prepare_text`` (token ids and lengths for a vocabulary tower, sentence
features for MiniLM) to embeddings; the batch (and the text length) are dynamic. Each graph
is run on fresh inputs after export and compared with eager PyTorch; ``export.json`` records
the input names, the largest difference, and refuses (deletes nothing, raises) above the
tolerance. Models without one embedding per item (SCAN's pairwise scores, ALBEF's re-ranking,
captioners) are refused by name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alignfuse.errors import ConfigError

FORMATS = ("onnx", "torchscript")
TOLERANCE = 1e-4


class _ImageTower(nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.encode_image(images)
        return out


class _TextTower(nn.Module):
    def __init__(self, model: Any, keys: Sequence[str]) -> None:
        super().__init__()
        self.model, self.keys = model, list(keys)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.encode_text(dict(zip(self.keys, tensors, strict=True)))
        return out


def check_exportable(model: nn.Module, name: str) -> None:
    """Refuse, by name, a model that is not a plain dual encoder."""
    from alignfuse.models.protocols import (
        CaptionGenerator,
        EmbeddingModel,
        PairwiseScorer,
        TwoStageRanker,
    )

    if not isinstance(model, EmbeddingModel) or isinstance(
        model, (PairwiseScorer, TwoStageRanker, CaptionGenerator)
    ):
        raise ConfigError(
            f"export: model {name!r} ({type(model).__name__}) is not supported; export handles "
            "dual encoders (one embedding per image and per text: dual_encoder, cca_dual, "
            "hf_dual)"
        )


def _save(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names: list[str],
    dynamic: dict[str, dict[int, str]],
    path: Path,
    fmt: str,
) -> None:
    if fmt == "torchscript":
        torch.jit.trace(module, inputs, check_trace=False).save(str(path))  # type: ignore[no-untyped-call]
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's shape-inference chatter
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**dynamic, "embedding": {0: "batch"}},
        )


def _run(path: Path, fmt: str, names: list[str], inputs: Sequence[torch.Tensor]) -> np.ndarray:
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path))  # type: ignore[no-untyped-call]
        with torch.no_grad():
            return np.asarray(loaded(*inputs).numpy())
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(
            "checking an ONNX export needs onnxruntime: pip install 'alignfuse[export]'"
        ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feed = {n: t.numpy() for n, t in zip(names, inputs, strict=True) if n in wanted}
    return np.asarray(session.run(None, feed)[0])


def export_model(
    model: nn.Module,
    out: str | Path,
    fmt: str = "onnx",
    image_size: int = 64,
    texts: Sequence[str] = ("a red circle above a blue square", "two green stars"),
    name: str = "model",
) -> dict[str, Any]:
    """Export ``model``'s image and text towers into ``out`` and check them against eager
    PyTorch on other inputs (another batch size, other texts); returns the manifest."""
    if fmt not in FORMATS:
        raise ConfigError(f"export: format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    check_exportable(model, name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    ext = "onnx" if fmt == "onnx" else "pt"
    g = torch.Generator().manual_seed(0)
    manifest: dict[str, Any] = {"format": fmt, "model": name, "tolerance": TOLERANCE}
    # image tower: traced on 2 images, checked on 3
    img_mod = _ImageTower(model).eval()
    trace_img = torch.randn(2, 3, image_size, image_size, generator=g)
    check_img = torch.randn(3, 3, image_size, image_size, generator=g)
    _save(img_mod, (trace_img,), ["images"], {"images": {0: "batch"}}, out / f"image.{ext}", fmt)
    with torch.no_grad():
        want = img_mod(check_img).numpy()
    got = _run(out / f"image.{ext}", fmt, ["images"], [check_img])
    manifest["image"] = {
        "file": f"image.{ext}",
        "inputs": ["images"],
        "max_abs_diff": float(np.abs(got - want).max()),
    }
    # text tower: traced on the given texts, checked on others of other lengths
    prep = model.prepare_text(list(texts))  # type: ignore[operator]
    keys = list(prep)
    txt_mod = _TextTower(model, keys).eval()
    dynamic = {
        k: (
            {0: "batch", 1: "length"}
            if prep[k].ndim >= 2 and prep[k].dtype == torch.int64
            else {0: "batch"}
        )
        for k in keys
    }
    _save(txt_mod, tuple(prep[k] for k in keys), keys, dynamic, out / f"text.{ext}", fmt)
    other = model.prepare_text(["a star", *texts, "a blue square left of two red circles"])  # type: ignore[operator]
    with torch.no_grad():
        want = txt_mod(*[other[k] for k in keys]).numpy()
    got = _run(out / f"text.{ext}", fmt, keys, [other[k] for k in keys])
    manifest["text"] = {
        "file": f"text.{ext}",
        "inputs": keys,
        "max_abs_diff": float(np.abs(got - want).max()),
    }
    (out / "export.json").write_text(json.dumps(manifest, indent=1))
    worst = max(manifest["image"]["max_abs_diff"], manifest["text"]["max_abs_diff"])
    if not worst <= TOLERANCE:
        raise ConfigError(
            f"export: the {fmt} graphs differ from eager PyTorch by {worst:.2e} (> {TOLERANCE}); "
            f"see {out / 'export.json'}"
        )
    return manifest


def export_run(
    run_dir: str | Path, out: str | Path | None = None, fmt: str = "onnx"
) -> dict[str, Any]:
    """Export the last checkpoint of a run folder (``out`` default ``RUN/export-<format>``)."""
    from alignfuse.engine.fit import load_run

    fit = load_run(run_dir)
    data = getattr(fit.task, "data", None)
    size = 64
    if data is not None and "test" in getattr(data, "splits", {}):
        images = data["test"].images
        if getattr(images, "ndim", 0) == 4:
            size = int(images.shape[1])
    target = Path(out) if out else Path(run_dir) / f"export-{fmt}"
    return export_model(fit.model, target, fmt, image_size=size, name=fit.cfg.model.name)
