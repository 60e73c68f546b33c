"""Any Hugging Face checkpoint on disk as an image tower, a text tower, or a whole CLIP /
SigLIP dual model, loaded offline.

Everything is read from a local folder with ``local_files_only=True``; nothing is downloaded.
Weights load only from ``model.safetensors`` (never from pickled ``.bin`` files). A missing
folder, a checkpoint of another architecture, or a missing tokenizer or preprocessor file
fails with a message naming what was expected.

- ``hf_vision`` (encoder): a vision model (``CLIPVisionModel``, ``SiglipVisionModel``, ViT,
  ...) or the vision half of a CLIP / SigLIP checkpoint; pooled output and patch tokens.
  Preprocessing is the checkpoint's own (``preprocessor_config.json``: resize, centre crop,
  mean / std), done in torch on alignfuse image tensors.
- ``hf_text`` (encoder): a text model (BERT, MiniLM, ...) or the text half of a CLIP / SigLIP
  checkpoint, with its tokenizer; mean pooling (sentence-transformers' convention), the
  first token, or the model's own pooler.
- ``hf_dual`` (model): a ``CLIPModel`` or ``SiglipModel`` as a dual encoder (its own
  projections), for zero-shot evaluation and fine-tuning with alignfuse's losses.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.image import IMAGE_MEAN, IMAGE_STD
from alignfuse.registry import ENCODERS, MODELS

DUAL_TYPES = ("clip", "siglip")
_RESAMPLE = {2: "bilinear", 3: "bicubic"}


def _folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"Hugging Face checkpoint folder {str(folder)!r} does not exist")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} has no config.json: not a Hugging Face checkpoint"
        )
    if not (folder / "model.safetensors").is_file() and not any(folder.glob("model-*.safetensors")):
        raise FileNotFoundError(
            f"{str(folder)!r} has no model.safetensors: alignfuse loads only safetensors "
            "checkpoints (convert with save_pretrained(..., safe_serialization=True))"
        )
    return folder


def _load(folder: Path) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)


def _model_type(folder: Path) -> str:
    return str(json.loads((folder / "config.json").read_text()).get("model_type", "?"))


def _tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")
    if not any((folder / n).is_file() for n in names):
        raise FileNotFoundError(
            f"{str(folder)!r} has no tokenizer file (expected one of {', '.join(names)})"
        )
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def _half(folder: Path, half: str, expected: str) -> Any:
    """The ``half`` ("vision" or "text") model of a checkpoint: the whole model, or that half
    of a CLIP / SigLIP dual model; any other architecture is refused, naming ``expected``."""
    model = _load(folder)
    kind = _model_type(folder)
    if hasattr(model, f"{half}_model") and kind in DUAL_TYPES:
        model = getattr(model, f"{half}_model")
    wants = "pixel_values" if half == "vision" else "input_ids"
    if getattr(model, "main_input_name", None) != wants:
        raise ValueError(
            f"checkpoint {str(folder)!r} is a {kind!r} model, not a {half} model (expected "
            f"{expected})"
        )
    return model


def _pooled(out: Any) -> torch.Tensor:
    """A ``get_*_features`` result as a tensor (transformers 5 returns an output object)."""
    t = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert isinstance(t, torch.Tensor)
    return t


class ImagePreprocessor(nn.Module):
    """A checkpoint's image preprocessing (``preprocessor_config.json``) in torch: from
    alignfuse image tensors to the model's ``pixel_values``."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        size = config.get("size") or {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        self.size = size
        crop = config.get("crop_size") or {}
        self.crop = (
            (crop["height"], crop["width"]) if config.get("do_center_crop") and crop else None
        )
        self.mode = _RESAMPLE.get(int(config.get("resample", 3)), "bicubic")
        mean = (
            config.get("image_mean", [0.5, 0.5, 0.5])
            if config.get("do_normalize", True)
            else [0.0] * 3
        )
        std = (
            config.get("image_std", [0.5, 0.5, 0.5])
            if config.get("do_normalize", True)
            else [1.0] * 3
        )
        scale = 1.0 if config.get("do_rescale", True) else 255.0
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) / scale, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) / scale, persistent=False)

    @classmethod
    def from_folder(cls, folder: Path) -> ImagePreprocessor:
        file = folder / "preprocessor_config.json"
        if not file.is_file():
            raise FileNotFoundError(
                f"{str(folder)!r} has no preprocessor_config.json (the image preprocessing: "
                "size, crop, mean and std); save the model's image processor there"
            )
        return cls(json.loads(file.read_text()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images must be floating point (B, 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        x = images * IMAGE_STD + IMAGE_MEAN  # to [0, 1]
        h, w = x.shape[-2:]
        if "shortest_edge" in self.size:
            s = int(self.size["shortest_edge"])
            short, long = (h, w) if h <= w else (w, h)
            new_long = int(s * long / short)
            out = (s, new_long) if h <= w else (new_long, s)
        elif "height" in self.size:
            out = (int(self.size["height"]), int(self.size["width"]))
        else:
            out = (h, w)
        if out != (h, w) and self.config.get("do_resize", True):
            x = F.interpolate(x, size=out, mode=self.mode, align_corners=False, antialias=True)
        if self.crop is not None:
            ch, cw = self.crop
            h, w = x.shape[-2:]
            top, left = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
            x = x[..., top : top + ch, left : left + cw]
        mean, std = self.mean, self.std
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        return (x - mean) / std


def _freeze(module: nn.Module, trainable: bool) -> None:
    if not isinstance(trainable, bool):
        raise ValueError(f"trainable must be true or false, got {trainable!r}")
    for p in module.parameters():
        p.requires_grad_(trainable)


class _Tower(nn.Module):
    """A tower whose frozen model stays in eval mode (no dropout) whatever ``.train()`` says."""

    model: Any
    trainable: bool

    def train(self, mode: bool = True) -> _Tower:
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self


@ENCODERS.register("hf_vision")
class HFVisionTower(_Tower):
    """A Hugging Face vision model from a local folder: pooled output and patch tokens, with
    the checkpoint's own preprocessing.

    Args:
        path: the checkpoint folder (``config.json``, ``model.safetensors``,
            ``preprocessor_config.json``); a CLIP / SigLIP checkpoint gives its vision half.
        trainable: fine-tune the tower (default: frozen).
    """

    modality = "image"

    def __init__(self, path: str, trainable: bool = False) -> None:
        super().__init__()
        folder = _folder(path)
        self.model = model = _half(
            folder,
            "vision",
            "e.g. clip_vision_model, siglip_vision_model, vit, or a CLIP / SigLIP checkpoint",
        )
        self.preprocess = ImagePreprocessor.from_folder(folder)
        self.out_dim = int(model.config.hidden_size)
        self.trainable = trainable
        _freeze(self.model, trainable)
        self.train()

    def _hidden(self, images: torch.Tensor) -> Any:
        return self.model(pixel_values=self.preprocess(images))

    def _patches(self, hidden: torch.Tensor) -> torch.Tensor:
        grid = getattr(getattr(self.model, "embeddings", None), "num_patches", None)
        return hidden[:, 1:] if grid is not None and hidden.shape[1] == grid + 1 else hidden

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, n_patches, hidden)`` (a class token, if any, left out)."""
        return self._patches(self._hidden(images).last_hidden_state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._hidden(images).pooler_output
        return out

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` and ``tokens`` from one pass."""
        res = self._hidden(images)
        tok = self._patches(res.last_hidden_state)
        pooled: torch.Tensor = res.pooler_output
        return pooled, tok


@ENCODERS.register("hf_text")
class HFTextTower(_Tower):
    """A Hugging Face text model and its tokenizer from a local folder.

    Args:
        path: the checkpoint folder (``config.json``, ``model.safetensors``, tokenizer files);
            a CLIP / SigLIP checkpoint gives its text half.
        pooling: ``"mean"`` over the attention mask (sentence-transformers), ``"cls"`` (the
            first token) or ``"pooler"`` (the model's own; CLIP's end token, SigLIP's head).
            Default: ``"pooler"`` for CLIP / SigLIP, else ``"mean"``.
        max_length: longest tokenised text (longer ones are truncated).
        trainable: fine-tune the tower (default: frozen).
    """

    modality = "text"

    def __init__(
        self, path: str, pooling: str | None = None, max_length: int = 64, trainable: bool = False
    ) -> None:
        super().__init__()
        folder = _folder(path)
        kind = _model_type(folder)
        self.tokenizer = _tokenizer(folder)
        model = _half(
            folder, "text", "e.g. bert, a sentence encoder, or a CLIP / SigLIP checkpoint"
        )
        pooling = pooling or ("pooler" if kind in DUAL_TYPES else "mean")
        if pooling not in ("mean", "cls", "pooler"):
            raise ValueError(f"pooling must be 'mean', 'cls' or 'pooler', got {pooling!r}")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        longest = getattr(model.config, "max_position_embeddings", max_length)
        self.model, self.pooling = model, pooling
        self.max_length = min(max_length, int(longest))
        self.padding: str | bool = "max_length" if kind == "siglip" else True  # as trained
        self.out_dim = int(model.config.hidden_size)
        self.trainable = trainable
        _freeze(self.model, trainable)
        self.train()

    def prepare(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask (runs in the data loader)."""
        enc = self.tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = {"input_ids": enc["input_ids"]}
        out["attention_mask"] = enc.get("attention_mask", torch.ones_like(enc["input_ids"]))
        return out

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        res = self._run(input_ids, attention_mask)
        hidden: torch.Tensor = res.last_hidden_state
        if self.pooling == "pooler":
            pooled: torch.Tensor = res.pooler_output
            return pooled
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)

    def tokens(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Contextual token states ``(B, L, hidden)`` and the mask ``(B, L)`` (bool)."""
        hidden: torch.Tensor = self._run(input_ids, attention_mask).last_hidden_state
        return hidden, attention_mask.bool()


class HFDualEncoder(nn.Module):
    """A CLIP or SigLIP checkpoint as an alignfuse dual encoder: unit embeddings from the
    checkpoint's own towers and projections (``EmbeddingModel``).

    Args:
        path: a folder with a ``CLIPModel`` or ``SiglipModel`` checkpoint, its tokenizer and
            ``preprocessor_config.json``.
        trainable: ``"none"`` (evaluation only), ``"projections"`` (the two projections and
            the logit scale / bias), or ``"all"``.
        max_length: longest tokenised text (at most the model's position embeddings; SigLIP
            pads every text to it, as it was trained).
    """

    def __init__(self, path: str, trainable: str = "none", max_length: int = 64) -> None:
        super().__init__()
        folder = _folder(path)
        kind = _model_type(folder)
        if kind not in DUAL_TYPES:
            raise ValueError(
                f"checkpoint {str(folder)!r} is a {kind!r} model; hf_dual expects a CLIP or "
                "SigLIP checkpoint (model_type 'clip' or 'siglip')"
            )
        if trainable not in ("none", "projections", "all"):
            raise ValueError(f"trainable must be 'none', 'projections' or 'all', got {trainable!r}")
        self.tokenizer = _tokenizer(folder)
        self.preprocess = ImagePreprocessor.from_folder(folder)
        self.model = _load(folder)
        longest = getattr(self.model.config.text_config, "max_position_embeddings", max_length)
        self.kind, self.max_length = kind, min(max_length, int(longest))
        self.embed_dim = int(getattr(self.model.config, "projection_dim", 0) or 0) or None
        for name, p in self.model.named_parameters():
            p.requires_grad_(
                trainable == "all"
                or (
                    trainable == "projections"
                    and not name.startswith(("vision_model.", "text_model."))
                )
            )

    def prepare_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        enc = self.tokenizer(
            list(texts),
            padding="max_length" if self.kind == "siglip" else True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        out = {"input_ids": enc["input_ids"]}
        if self.kind == "clip" and "attention_mask" in enc:  # SigLIP was trained without one
            out["attention_mask"] = enc["attention_mask"]
        return out

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        feats = _pooled(self.model.get_image_features(pixel_values=self.preprocess(images)))
        return F.normalize(feats, dim=-1)

    def encode_text(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(_pooled(self.model.get_text_features(**prepared)), dim=-1)

    def forward(
        self, images: torch.Tensor, prepared: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(prepared)

    def logits(self, images: torch.Tensor, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        """The checkpoint's own image-text logits: ``scale * cos`` (+ ``bias`` for SigLIP)."""
        sims = self.encode_image(images) @ self.encode_text(prepared).T
        out: torch.Tensor = sims * self.model.logit_scale.exp()
        if self.kind == "siglip":
            out = out + self.model.logit_bias
        return out


@MODELS.register("hf_dual")
def build_hf_dual(
    path: str,
    trainable: str = "none",
    max_length: int = 64,
    tokenizer: Any = None,
    embed_dim: int | None = None,
    image_encoder: str | None = None,
    text_encoder: str | None = None,
) -> HFDualEncoder:
    """A CLIP or SigLIP checkpoint from a local folder as a dual encoder (its own towers,
    projections and tokenizer; ``tokenizer``, ``embed_dim`` and the encoder names of the
    experiment config are not used)."""
    del tokenizer, embed_dim, image_encoder, text_encoder
    return HFDualEncoder(path, trainable, max_length)
