"""Image encoders: a small CNN and a tiny ViT. Both map ``(B, 3, H, W)`` float images to
``(B, out_dim)`` vectors and expose their spatial tokens through ``tokens``."""

from __future__ import annotations

import torch
from torch import nn

from alignfuse.registry import ENCODERS

# alignfuse image tensors are (uint8 / 255 - IMAGE_MEAN) / IMAGE_STD
# (alignfuse.engine.evaluate.images_to_tensor); pretrained towers undo it before their own
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25


def _check_images(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")


@ENCODERS.register("cnn")
class SmallCNN(nn.Module):
    """A small VGG-style CNN: a stride-2 stem, three conv blocks (BatchNorm, ReLU, 2x2
    pooling between them), global average pooling. ``out_dim`` is the last block's width."""

    modality = "image"

    def __init__(self, width: int = 24, out_dim: int = 192) -> None:
        super().__init__()
        if width < 1 or out_dim < 1:
            raise ValueError(f"width and out_dim must be >= 1, got {width}, {out_dim}")
        chans = [3, width, width * 2, width * 4, out_dim]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(
                    chans[i], chans[i + 1], 3, stride=2 if i == 0 else 1, padding=1, bias=False
                ),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i in (1, 2):
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.out_dim = out_dim

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Spatial features as tokens: ``(B, H/8 * W/8, out_dim)``."""
        _check_images(images)
        out: torch.Tensor = self.body(images).flatten(2).transpose(1, 2)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokens(images).mean(1)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` and ``tokens`` from one pass: ``(B, out_dim)`` and ``(B, R, out_dim)``."""
        tok = self.tokens(images)
        return tok.mean(1), tok


@ENCODERS.register("vit")
class TinyViT(nn.Module):
    """A tiny Vision Transformer (Dosovitskiy et al. 2021): non-overlapping patches, a learned
    class token and position embeddings, pre-norm encoder layers; returns the class token."""

    modality = "image"

    def __init__(
        self,
        image_size: int = 64,
        patch: int = 8,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        out_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image_size {image_size} is not a multiple of patch {patch}")
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        n = (image_size // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, dim * 4, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim) if out_dim != dim else nn.Identity()
        self.out_dim = out_dim

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        _check_images(images)
        x = self.patch(images).flatten(2).transpose(1, 2)
        if x.shape[1] + 1 != self.pos.shape[1]:
            raise ValueError(
                f"images of {tuple(images.shape[-2:])} give {x.shape[1]} patches, "
                f"the model was built for {self.pos.shape[1] - 1}"
            )
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        out: torch.Tensor = self.norm(self.encoder(x))
        return out

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``(B, n_patches, out_dim)``."""
        out: torch.Tensor = self.head(self._encode(images)[:, 1:])
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self._encode(images)[:, 0])
        return out

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` and ``tokens`` from one pass: ``(B, out_dim)`` and ``(B, R, out_dim)``."""
        out: torch.Tensor = self.head(self._encode(images))
        return out[:, 0], out[:, 1:]
