"""Token-wise late interaction, FILIP (Yao et al. 2022, "FILIP: Fine-grained Interactive
Language-Image Pre-Training").

For L2-normalised tokens ``x_ik`` (item ``i`` of modality a, token ``k``) and ``y_jr``, with
padding masks, the similarity of ``i`` and ``j`` seen from each side is the mean over one
side's tokens of the best match on the other side:

    s^a_ij = mean_k max_r <x_ik, y_jr>        s^b_ij = mean_r max_k <x_ik, y_jr>

and the loss is InfoNCE with ``s^a`` for a-to-b and ``s^b`` for b-to-a:

    L = 1/2 [ CE_rows(t s^a) + CE_cols(t s^b) ]
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse._matmul import mm_nt
from alignfuse.losses._common import reduce
from alignfuse.losses.info_nce import DEFAULT_LOGIT_SCALE
from alignfuse.outputs import LossOutput
from alignfuse.registry import LOSSES


def _check_tokens(x: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (N, L, D), got {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: {tuple(x.shape)}")
    # a sum carries any NaN / Inf; only when it is not finite (or overflows) is every entry
    # tested
    if not torch.isfinite(x.detach().sum()) and not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ValueError(
            f"mask of {name} must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
        )
    mask = mask.to(device=x.device, dtype=torch.bool)
    if not mask.any(1).all():
        raise ValueError(f"mask of {name} masks every token of some item")
    return mask


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` vectors as one-token sequences ``(N, 1, D)``; sequences pass through."""
    return x[:, None] if x.ndim == 2 else x


def token_wise_similarity(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP similarities ``(s^a, s^b)``, each ``(N_x, N_y)``, computed in chunks of ``y``.

    Args:
        x: ``(N_x, L_x, D)`` tokens; y: ``(N_y, L_y, D)`` tokens.
        mask_x, mask_y: ``True`` for real tokens, ``False`` for padding.
    """
    mx, my = _check_tokens(x, mask_x, "x"), _check_tokens(y, mask_y, "y")
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"x and y differ in width: {x.shape[2]} vs {y.shape[2]}")
    x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    neg = torch.finfo(x.dtype).min
    (nx, lx, d), ly = x.shape, y.shape[1]
    padded = not (bool(mx.all()) and bool(my.all()))
    wx = mx[:, :, None].to(x.dtype)  # (N_x, L_x, 1)
    sa, sb = [], []
    for start in range(0, y.shape[0], chunk):
        yc, myc = y[start : start + chunk], my[start : start + chunk]
        # every token of x against every token of the chunk, laid out as the product gives
        # it (no permuted copy): (N_x, L_x, c, L_y); oneDNN in float32 without autograd
        t = mm_nt(x.reshape(nx * lx, d), yc.reshape(-1, d)).view(nx, lx, yc.shape[0], ly)
        if padded:
            t = t.masked_fill(~(mx[:, :, None, None] & myc[None, None]), neg)
        best_for_x = t.max(3).values  # (N_x, L_x, c)
        best_for_y = t.max(1).values  # (N_x, c, L_y)
        wy = myc[None].to(x.dtype)  # (1, c, L_y)
        sa.append((best_for_x * wx).sum(1) / wx.sum(1))
        sb.append((best_for_y * wy).sum(2) / wy.sum(2))
    return torch.cat(sa, 1), torch.cat(sb, 1)


def token_wise(
    x: torch.Tensor,
    y: torch.Tensor,
    mask_x: torch.Tensor | None = None,
    mask_y: torch.Tensor | None = None,
    logit_scale: torch.Tensor | float = DEFAULT_LOGIT_SCALE,
    reduction: str = "mean",
) -> torch.Tensor:
    """FILIP's token-wise contrastive loss over ``N`` matched pairs of token sequences."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must hold the same number of pairs: {x.shape[0]} vs {y.shape[0]}"
        )
    if x.shape[0] < 2:
        raise ValueError("token_wise needs a batch of at least 2 pairs (there are no negatives)")
    sa, sb = token_wise_similarity(x, y, mask_x, mask_y)
    scale = logit_scale.exp() if isinstance(logit_scale, torch.Tensor) else math.exp(logit_scale)
    target = torch.arange(x.shape[0], device=x.device)
    per = 0.5 * (
        F.cross_entropy(sa * scale, target, reduction="none")
        + F.cross_entropy((sb * scale).T, target, reduction="none")
    )
    return reduce(per, reduction)


@LOSSES.register("token_wise")
class TokenWiseLoss(nn.Module):
    """FILIP token-wise late-interaction contrastive loss (Yao et al. 2022) with a learnable
    temperature; takes token sequences ``(N, L, D)`` and optional padding masks. Given plain
    ``(N, D)`` embeddings it treats each as a single token (and reduces to InfoNCE)."""

    def __init__(
        self, temperature: float = 0.07, max_scale: float = 100.0, reduction: str = "mean"
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))
        self.max_log_scale = math.log(max_scale)
        self.reduction = reduction

    def forward(
        self,
        a: torch.Tensor,
        b: torch.Tensor,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
    ) -> LossOutput:
        a, b = as_tokens(a), as_tokens(b)
        scale = self.logit_scale.clamp(max=self.max_log_scale)
        loss = token_wise(a, b, mask_a, mask_b, scale, self.reduction)
        return LossOutput(loss, {"temperature": float(1 / scale.detach().exp())})
