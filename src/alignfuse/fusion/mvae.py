"""Multimodal VAE with a product of experts (MVAE, Wu & Goodman 2018).

Each modality's encoder gives a Gaussian expert ``q(z | x_m) = N(mu_m, sigma_m^2)``; the joint
posterior is their product with the prior expert ``N(0, I)``: precision
``T = 1 + sum_m 1 / sigma_m^2``, mean ``(sum_m mu_m / sigma_m^2) / T``. A missing modality is
simply left out of the product, so one model serves every subset of modalities. ``loss`` is
a sub-sampled ELBO (the joint ELBO plus each single-modality ELBO) in which every posterior
reconstructs every given modality. The generative model of the paper (each subset
reconstructing its own modalities, sampling, IWAE likelihoods, MMVAE and MoPoE mixtures) is
:class:`alignfuse.models.MVAE`.

Example:
    >>> import torch
    >>> m = MVAEFusion({"image": 10, "text": 6}, out_dim=4)
    >>> z = m({"image": torch.randn(3, 10)})  # text missing: image expert and prior only
    >>> z.shape
    torch.Size([3, 4])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.fusion._base import Fusion, pool
from alignfuse.registry import FUSION


def product_of_experts(
    mus: list[torch.Tensor], logvars: list[torch.Tensor], *, prior: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and log-variance of the product of Gaussian experts (with a standard normal
    prior expert when ``prior``)."""
    if not mus or len(mus) != len(logvars):
        raise ValueError("product_of_experts needs as many means as log-variances, at least one")
    total = torch.full_like(mus[0], 1.0 if prior else 0.0)
    weighted = torch.zeros_like(mus[0])
    for mu, lv in zip(mus, logvars, strict=True):
        precision = torch.exp(-lv)
        total = total + precision
        weighted = weighted + mu * precision
    return weighted / total, -torch.log(total)


@FUSION.register("mvae")
class MVAEFusion(Fusion):
    """MVAE: the joint representation is the product-of-experts posterior mean ``(B, out_dim)``
    (``out_dim`` is the latent size). Missing modalities are allowed (documented behaviour).
    ``loss(inputs)`` is the sub-sampled ELBO for training."""

    requires_all = False

    def __init__(
        self, dims: Mapping[str, int], out_dim: int, hidden: int = 128, beta: float = 1.0
    ) -> None:
        super().__init__(dims, out_dim)
        self.encoders = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, 2 * out_dim))
                for m, d in self.dims.items()
            }
        )
        self.decoders = nn.ModuleDict(
            {
                m: nn.Sequential(nn.Linear(out_dim, hidden), nn.GELU(), nn.Linear(hidden, d))
                for m, d in self.dims.items()
            }
        )
        self.beta = beta

    def posterior(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of the product of the experts of the given modalities and the prior."""
        x, mk = self._check(inputs, masks, allow_missing=True)
        mus, lvs = [], []
        for m in self.modalities:
            if m in x:
                mu, lv = self.encoders[m](pool(x[m], mk[m])).chunk(2, -1)
                mus.append(mu)
                lvs.append(lv.clamp(-10, 10))
        return product_of_experts(mus, lvs)

    def forward(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        return self.posterior(inputs, masks)[0]

    def _elbo(
        self, x: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        mu, lv = self.posterior(x)
        z = mu + torch.randn_like(mu) * (0.5 * lv).exp() if self.training else mu
        rec = sum(
            F.mse_loss(self.decoders[m](z), targets[m], reduction="none").sum(-1) for m in targets
        )
        kl = -0.5 * (1 + lv - mu.pow(2) - lv.exp()).sum(-1)
        return (rec + self.beta * kl).mean()  # type: ignore[no-any-return, union-attr]

    def loss(
        self, inputs: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Sub-sampled ELBO (negated): joint + each single modality, reconstructing all given
        modalities from each posterior."""
        x, mk = self._check(inputs, masks, allow_missing=True)
        targets = {m: pool(v, mk[m]) for m, v in x.items()}
        total = self._elbo(x, targets)
        if len(x) > 1:
            for m in x:
                total = total + self._elbo({m: x[m]}, targets)
        return total
