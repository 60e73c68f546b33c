"""Small layers shared by several blocks and models (one place for each)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with GELU between them (none after the last).

    Example:
        >>> net = mlp([4, 8, 2])
        >>> [type(m).__name__ for m in net]
        ['Linear', 'GELU', 'Linear']
    """
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def prenorm_ffn(width: int) -> nn.Sequential:
    """A pre-norm feed-forward block: LayerNorm, ``width -> 4 width -> width`` with GELU."""
    return nn.Sequential(
        nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
    )


class QFormerLayer(nn.Module):
    """One pre-norm Q-Former layer (BLIP-2): self-attention over ``[queries; text]`` under a
    mask, cross-attention from the queries to the image tokens, and a feed-forward block per
    side. The Q-Former model (:mod:`alignfuse.models.qformer`) and the Q-Former fusion
    (:mod:`alignfuse.fusion.attention`, queries only: ``text=False``) both stack it.
    """

    def __init__(self, width: int, heads: int, text: bool = True) -> None:
        super().__init__()
        self.norm_self, self.norm_cross = nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ffn_query = prenorm_ffn(width)
        self.ffn_text = prenorm_ffn(width) if text else None

    def forward(
        self,
        queries: torch.Tensor,
        text: torch.Tensor,
        text_pad: torch.Tensor,
        image: torch.Tensor | None,
        attn_mask: torch.Tensor | None,
        image_pad: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``queries (B, Q, W)``, ``text (B, L, W)`` (either may have length 0),
        ``text_pad (B, L)`` True at padding, ``image (B, R, W)`` (``None``: no queries),
        ``attn_mask (Q + L, Q + L)`` True where attention is blocked, ``image_pad (B, R)``
        True at padded image (key) tokens."""
        nq = queries.shape[1]
        x = torch.cat([queries, text], 1)
        pad = F.pad(text_pad, (nq, 0), value=False)
        h = self.norm_self(x)
        x = (
            x
            + self.self_attn(
                h, h, h, attn_mask=attn_mask, key_padding_mask=pad, need_weights=False
            )[0]
        )
        queries, text = x[:, :nq], x[:, nq:]
        if nq:
            assert image is not None
            h = self.norm_cross(queries)
            queries = (
                queries
                + self.cross_attn(h, image, image, key_padding_mask=image_pad, need_weights=False)[
                    0
                ]
            )
            queries = queries + self.ffn_query(queries)
        if text.shape[1]:
            if self.ffn_text is None:
                raise ValueError("this Q-Former layer has no text side (text=False)")
            text = text + self.ffn_text(text)
        return queries, text
