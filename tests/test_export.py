"""alignfuse export: a trained dual encoder's towers as ONNX (checked with onnxruntime) and
TorchScript, equal to eager PyTorch within 1e-4; unsupported models refused by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from alignfuse.engine.evaluate import images_to_tensor
from alignfuse.errors import ConfigError
from alignfuse.export import export_model
from helpers import quiet_trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import TINY_OVERRIDES

    folder = tmp_path_factory.mktemp("export")
    tr = quiet_trainer(folder, [*TINY_OVERRIDES, "train.epochs=1"], "run")
    tr.fit()
    return folder / "run", tr


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_towers_equal_eager_pytorch(trained, fmt, capsys) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from alignfuse.cli import main

    run, tr = trained
    assert main(["export", str(run), "--format", fmt]) == 0
    assert "max |diff| vs eager" in capsys.readouterr().out
    out = run / f"export-{fmt}"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["image"]["max_abs_diff"] <= 1e-4 and manifest["text"]["max_abs_diff"] <= 1e-4
    assert manifest["text"]["inputs"] == ["ids", "lengths"]
    # real test images and captions, another batch size
    model = tr.model.eval()
    split = tr.data["test"]
    images = images_to_tensor(split.images[:7])
    texts = [c for caps in split.captions[:3] for c in caps]
    prep = model.prepare_text(texts)
    with torch.no_grad():
        want_img, want_txt = model.encode_image(images).numpy(), model.encode_text(prep).numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        img = ort.InferenceSession(str(out / "image.onnx")).run(None, {"images": images.numpy()})[0]
        txt = ort.InferenceSession(str(out / "text.onnx")).run(
            None, {k: v.numpy() for k, v in prep.items()}
        )[0]
    else:
        img = torch.jit.load(str(out / "image.pt"))(images).detach().numpy()
        txt = torch.jit.load(str(out / "text.pt"))(prep["ids"], prep["lengths"]).detach().numpy()
    assert np.abs(img - want_img).max() <= 1e-4
    assert np.abs(txt - want_txt).max() <= 1e-4


def test_unsupported_models_are_refused_by_name(tmp_path) -> None:
    from alignfuse.encoders.tokenizer import Tokenizer
    from alignfuse.models import build_scan

    scan = build_scan(
        Tokenizer.build(["a red circle"]), embed_dim=8, image_args={"width": 4, "out_dim": 8}
    )
    with pytest.raises(ConfigError, match="model 'scan' \\(SCANModel\\) is not supported"):
        export_model(scan, tmp_path, name="scan")
    with pytest.raises(ConfigError, match="format must be one of onnx, torchscript"):
        export_model(scan, tmp_path, fmt="tflite")
