"""Explicit alignment of frozen towers in closed form: CCA between image and text features
(``model.name: cca_dual``).

Two frozen towers (by default the ImageNet-trained EfficientNet-Lite0 and the pretrained
MiniLM) give features of each training (image, caption) pair; ridge CCA (Hotelling 1936)
finds the projections of both into ``embed_dim`` maximally correlated directions, and
retrieval ranks by the cosine of the projected, whitened features (as in the CCA-based
image-text retrieval of Gong et al. 2014 and Klein et al. 2015). There is no gradient step:
the ``image_text`` task calls :meth:`CCADualEncoder.fit_pairs` on the training pairs before
the (empty) training loop, and the fitted projections are buffers, so checkpoints hold them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.encoders.tokenizer import Tokenizer
from alignfuse.registry import MODELS


@runtime_checkable
class ClosedFormFit(Protocol):
    """A model fitted in closed form on the training pairs (no gradient steps)."""

    def fit_pairs(
        self, images: np.ndarray, texts: Sequence[str], owner: np.ndarray, batch_size: int
    ) -> None: ...


class CCADualEncoder(nn.Module):
    """Frozen towers aligned by ridge CCA; unit embeddings of ``embed_dim`` canonical
    directions (``EmbeddingModel``).

    Args:
        image_encoder, text_encoder: frozen modules (no trainable parameter).
        embed_dim: canonical pairs kept.
        reg: ridge on each view's covariance, as a fraction of the view's mean variance.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        text_encoder: nn.Module,
        embed_dim: int = 256,
        reg: float = 0.1,
    ) -> None:
        super().__init__()
        trainable = [
            p for m in (image_encoder, text_encoder) for p in m.parameters() if p.requires_grad
        ]
        if trainable:
            raise ValueError(
                "cca_dual fits projections of frozen towers: freeze the image and text "
                "encoders (e.g. efficientnet_lite0 with trainable none, minilm)"
            )
        if embed_dim < 1 or reg < 0:
            raise ValueError(f"embed_dim must be >= 1 and reg >= 0, got {embed_dim}, {reg}")
        self.image_encoder, self.text_encoder = image_encoder, text_encoder
        self.embed_dim, self.reg = embed_dim, reg
        dx, dy = int(image_encoder.out_dim), int(text_encoder.out_dim)  # type: ignore[arg-type]
        k = min(embed_dim, dx, dy)
        for name, shape in [
            ("image_mean", (dx,)),
            ("image_weights", (dx, k)),
            ("text_mean", (dy,)),
            ("text_weights", (dy, k)),
        ]:
            self.register_buffer(name, torch.zeros(shape))
        self.register_buffer("correlations", torch.zeros(k))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def prepare_text(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = self.text_encoder.prepare(texts)  # type: ignore[operator]
        return out

    def _project(self, feats: torch.Tensor, side: str) -> torch.Tensor:
        if not bool(self.fitted):
            raise RuntimeError("cca_dual is not fitted: call fit_pairs (the image_text task does)")
        mean, w = getattr(self, f"{side}_mean"), getattr(self, f"{side}_weights")
        return F.normalize((feats.to(w.dtype) - mean) @ w, dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self._project(self.image_encoder(images), "image")

    def encode_text(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._project(self.text_encoder(**prepared), "text")

    def forward(
        self, images: torch.Tensor, prepared: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_image(images), self.encode_text(prepared)

    @torch.no_grad()
    def fit_pairs(
        self, images: np.ndarray, texts: Sequence[str], owner: np.ndarray, batch_size: int = 256
    ) -> None:
        """Fit on every training caption paired with its image (``owner[t]`` is the image of
        text ``t``); ``images`` are uint8 ``(N, H, W, 3)``."""
        from alignfuse.correlation import CCA
        from alignfuse.engine.evaluate import images_to_tensor, model_device

        if len(texts) != len(owner) or len(texts) < 2:
            raise ValueError(
                f"texts and owner must pair at least 2 rows, got {len(texts)}, {len(owner)}"
            )
        dev = model_device(self)
        was = self.training
        self.eval()
        try:
            x = torch.cat(
                [
                    self.image_encoder(images_to_tensor(images[i : i + batch_size], dev))
                    for i in range(0, len(images), batch_size)
                ]
            ).double()
            y = torch.cat(
                [
                    self.text_encoder(
                        **{
                            k: v.to(dev)
                            for k, v in self.prepare_text(texts[i : i + batch_size]).items()
                        }
                    )
                    for i in range(0, len(texts), batch_size)
                ]
            ).double()
        finally:
            self.train(was)
        x = x[torch.as_tensor(owner, device=x.device, dtype=torch.long)]
        rx = self.reg * float(x.var(0).mean())
        ry = self.reg * float(y.var(0).mean())
        k = min(self.embed_dim, x.shape[1], y.shape[1])
        cca = CCA(k, reg_x=rx, reg_y=ry).fit(x.cpu(), y.cpu())
        for name, value in [
            ("image_mean", cca.mean_x_),
            ("image_weights", cca.x_weights_),
            ("text_mean", cca.mean_y_),
            ("text_weights", cca.y_weights_),
            ("correlations", cca.correlations_),
        ]:
            getattr(self, name).copy_(torch.as_tensor(value))
        fitted = self.fitted
        assert isinstance(fitted, torch.Tensor)
        fitted.fill_(True)


@MODELS.register("cca_dual")
def build_cca_dual(
    tokenizer: Tokenizer | None = None,
    embed_dim: int = 256,
    image_encoder: str = "efficientnet_lite0",
    text_encoder: str = "minilm",
    image_args: dict[str, Any] | None = None,
    text_args: dict[str, Any] | None = None,
    reg: float = 0.1,
) -> CCADualEncoder:
    """Frozen image and text towers aligned by ridge CCA in closed form (no training steps)."""
    from alignfuse.models.dual_encoder import build_towers

    img, txt = build_towers(tokenizer, image_encoder, text_encoder, image_args, text_args)
    return CCADualEncoder(img, txt, embed_dim, reg)
