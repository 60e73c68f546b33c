"""The multimodal variational autoencoder (MVAE, Wu & Goodman 2018) as a trained generative
model.

One latent ``z ~ N(0, I)`` generates every modality, ``p(x_1..x_M | z) = prod_m p(x_m | z)``.
Each modality's encoder gives a Gaussian expert for its likelihood term, and the posterior
of any subset ``S`` of modalities is the product of those experts with the prior,

    q(z | x_S)  ∝  p(z) prod_{m in S} q~(z | x_m)       (:func:`product_of_experts`),

which is exact when the experts are (``p(z | x_S) ∝ p(z) prod_m p(x_m | z)``). So one model
infers from any subset: a missing modality is left out of the product. Training maximises the
paper's sub-sampled ELBO, a sum of ELBOs over subsets, each reconstructing its own
modalities:

    ELBO(x_S) = E_{q(z | x_S)}[sum_{m in S} lambda_m log p(x_m | z)] - beta KL(q(z | x_S) || p(z)),

with ``subsets="paper"`` (the joint, every single modality and ``random_subsets`` random
others per batch), ``"all"`` (every non-empty subset) or ``"joint"`` (the joint alone: the
ablation of the paper's Fig. 3, whose single-modality posteriors are never trained).

``aggregation="moe"`` makes it MMVAE (Shi et al. 2019): the posterior of a subset is the
equal mixture of the unimodal posteriors (each encoder's Gaussian), trained with the
stratified ELBO ``mean_{m in S} E_{q(z | x_m)}[log p(x_S | z) + log p(z) - log q(z | x_S)]``,
in which each unimodal posterior must reconstruct every modality of the subset.
``aggregation="mopoe"`` (MoPoE, Sutter et al. 2021) mixes the products of experts of every
non-empty subset of the given modalities, with the same stratified ELBO (the paper samples
one component per row and bounds the mixture's KL by the mean of its components' KLs; the
stratified form keeps the mixture's own density).

Likelihoods per modality: ``bernoulli`` (logits; targets in [0, 1], grey levels as for
MNIST), ``gaussian`` (mean, fixed ``scale``) and ``categorical`` (logits; integer targets,
e.g. a label). :meth:`MVAE.log_marginal` is the importance-weighted estimate (IWAE, Burda
et al. 2016) of ``log p(x_S)``, proposal ``q(z | x_S)``; :meth:`MVAE.log_conditional` is
``log p(x_T | x_G) = log p(x_T, x_G) - log p(x_G)``, as the paper evaluates it.
:func:`train_mvae` trains with the library's epoch loop (progress bar, atomic checkpoints,
exact resumption) and KL annealing.

Example:
    >>> import torch
    >>> model = MVAE({"image": 64, "label": 10}, {"image": "bernoulli", "label": "categorical"},
    ...              latent=4, hidden=(32,))
    >>> batch = {"image": torch.rand(5, 64), "label": torch.tensor([0, 1, 2, 3, 4])}
    >>> model.loss(batch).shape
    torch.Size([])
    >>> model.predict({"image": batch["image"]}, "label").shape   # the label from the image
    torch.Size([5, 10])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alignfuse.engine.fit import fit_module
from alignfuse.fusion.mvae import product_of_experts
from alignfuse.layers import mlp

LIKELIHOODS = ("bernoulli", "gaussian", "categorical")
SUBSETS = ("paper", "all", "joint")
AGGREGATIONS = ("poe", "moe", "mopoe")
LOGVAR_RANGE = (-12.0, 12.0)  # experts' log-variances are clamped here (no inf precision)

Batch = Mapping[str, torch.Tensor]


def nonempty_subsets(items: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Every non-empty subset of ``items`` as a tuple in their order, largest first."""
    return [c for r in range(len(items), 0, -1) for c in itertools.combinations(items, r)]


class MVAE(nn.Module):
    """Multimodal VAE with a product-of-experts posterior.

    Args:
        dims: modality -> feature count (for ``categorical``: the number of classes).
        likelihoods: modality -> ``bernoulli`` | ``gaussian`` | ``categorical``.
        latent: size of ``z``.
        hidden: hidden widths of every encoder (decoders mirror them); ``()`` makes both
            linear.
        scale: modality -> standard deviation of a ``gaussian`` likelihood (default 1).
        weights: modality -> ``lambda_m``, the weight of its log-likelihood (default 1).
        beta: weight of the KL term.
        subsets: which subset ELBOs :meth:`loss` sums: ``paper`` | ``all`` | ``joint``.
        random_subsets: with ``paper``, how many further random subsets per batch.
        aggregation: ``poe`` (the MVAE: the experts' product with the prior) or ``moe``
            (MMVAE, Shi et al. 2019: an equal mixture of the unimodal posteriors, each
            encoder's Gaussian; with ``subsets="joint"`` this is the paper's stratified ELBO,
            in which every unimodal posterior reconstructs every modality), or ``mopoe``
            (MoPoE, Sutter et al. 2021: the equal mixture of the products of experts of every
            non-empty subset of the given modalities, each with the prior).
    """

    def __init__(
        self,
        dims: Mapping[str, int],
        likelihoods: Mapping[str, str],
        latent: int = 16,
        hidden: Sequence[int] = (256,),
        scale: Mapping[str, float] | None = None,
        weights: Mapping[str, float] | None = None,
        beta: float = 1.0,
        subsets: str = "paper",
        random_subsets: int = 0,
        aggregation: str = "poe",
    ) -> None:
        super().__init__()
        if not dims:
            raise ValueError("dims must name at least one modality")
        if set(likelihoods) != set(dims):
            raise ValueError(
                f"likelihoods must name the modalities of dims {sorted(dims)}, got {sorted(likelihoods)}"
            )
        for m, lik in likelihoods.items():
            if lik not in LIKELIHOODS:
                raise ValueError(f"likelihoods[{m!r}] must be one of {LIKELIHOODS}, got {lik!r}")
            if int(dims[m]) < 1 or (lik == "categorical" and int(dims[m]) < 2):
                raise ValueError(f"dims[{m!r}] must be >= 1 (>= 2 classes), got {dims[m]}")
        for name, extra in (("scale", scale), ("weights", weights)):
            for m, v in (extra or {}).items():
                if m not in dims:
                    raise ValueError(f"{name} names {m!r}, not a modality of dims {sorted(dims)}")
                if not v > 0:
                    raise ValueError(f"{name}[{m!r}] must be positive, got {v}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if subsets not in SUBSETS:
            raise ValueError(f"subsets must be one of {SUBSETS}, got {subsets!r}")
        if latent < 1 or beta < 0 or random_subsets < 0:
            raise ValueError(
                f"need latent >= 1, beta >= 0 and random_subsets >= 0; got {latent}, {beta}, {random_subsets}"
            )
        self.dims = {m: int(d) for m, d in dims.items()}
        self.modalities = list(self.dims)
        self.likelihoods = dict(likelihoods)
        self.latent = latent
        self.scale = {m: float((scale or {}).get(m, 1.0)) for m in self.dims}
        self.weights = {m: float((weights or {}).get(m, 1.0)) for m in self.dims}
        self.beta = float(beta)
        self.subsets = subsets
        self.random_subsets = random_subsets
        self.aggregation = aggregation
        hid = list(hidden)
        self.encoders = nn.ModuleDict({m: mlp([d, *hid, 2 * latent]) for m, d in self.dims.items()})
        self.decoders = nn.ModuleDict(
            {m: mlp([latent, *hid[::-1], d]) for m, d in self.dims.items()}
        )

    # --- inputs -------------------------------------------------------------------------
    def _check(self, batch: Batch, what: str = "batch") -> dict[str, torch.Tensor]:
        if not isinstance(batch, Mapping) or not batch:
            raise ValueError(f"{what} must be a non-empty mapping of modality -> tensor")
        rows = None
        out = {}
        for m, v in batch.items():
            if m not in self.dims:
                raise ValueError(f"{what} has modality {m!r}; the model knows {self.modalities}")
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"{what}[{m!r}] must be a tensor, got {type(v).__name__}")
            if self.likelihoods[m] == "categorical":
                if v.ndim != 1 or v.dtype.is_floating_point or v.dtype == torch.bool:
                    raise ValueError(
                        f"{what}[{m!r}] must be a 1-D integer tensor of class indices, got {tuple(v.shape)} {v.dtype}"
                    )
                if len(v) and (int(v.min()) < 0 or int(v.max()) >= self.dims[m]):
                    raise ValueError(f"{what}[{m!r}] has classes outside [0, {self.dims[m]})")
            else:
                if v.ndim != 2 or v.shape[1] != self.dims[m] or not v.dtype.is_floating_point:
                    raise ValueError(
                        f"{what}[{m!r}] must be a float tensor of shape (B, {self.dims[m]}), got {tuple(v.shape)} {v.dtype}"
                    )
                if not torch.isfinite(v).all():
                    raise ValueError(f"{what}[{m!r}] contains NaN or Inf")
                if self.likelihoods[m] == "bernoulli" and ((v < 0).any() or (v > 1).any()):
                    raise ValueError(
                        f"{what}[{m!r}] has a bernoulli likelihood: values must be in [0, 1]"
                    )
            if rows is not None and len(v) != rows:
                raise ValueError(
                    f"{what}: modalities have different batch sizes ({rows} and {len(v)})"
                )
            rows = len(v)
            out[m] = v
        if not rows:
            raise ValueError(f"{what} is empty (0 rows)")
        return out

    def _encoder_input(self, m: str, v: torch.Tensor) -> torch.Tensor:
        p = next(self.encoders[m].parameters())
        if self.likelihoods[m] == "categorical":
            return F.one_hot(v.long(), self.dims[m]).to(p)
        return v.to(p)

    # --- the model ----------------------------------------------------------------------
    def experts(self, batch: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """modality -> ``(mu, logvar)`` of its Gaussian expert, for the modalities given
        (with ``moe``: its unimodal posterior)."""
        return self._experts(self._check(batch))

    def _experts(self, x: Batch) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        out = {}
        for m, v in x.items():
            mu, lv = self.encoders[m](self._encoder_input(m, v)).chunk(2, -1)
            out[m] = (mu, lv.clamp(*LOGVAR_RANGE))
        return out

    def posterior(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of ``q(z | x_S)``, S = the modalities in ``batch`` (``poe``; a
        ``moe`` posterior is a mixture: :meth:`posterior_components`)."""
        if self.aggregation != "poe":
            raise ValueError(
                f"aggregation={self.aggregation!r} has a mixture posterior: use posterior_components"
            )
        return self._components(self._check(batch))[0]

    def posterior_components(self, batch: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(mu, logvar)`` of each component of ``q(z | x_S)``, an equal-weight mixture:
        one (the product of experts) for ``poe``, one per modality for ``moe``, the product
        of experts of each non-empty subset of S for ``mopoe`` (largest first)."""
        return self._components(self._check(batch))

    def _components(self, x: Batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ex = list(self._experts(x).values())
        if self.aggregation == "moe":
            return ex
        subsets = nonempty_subsets(ex) if self.aggregation == "mopoe" else [tuple(ex)]
        return [product_of_experts([e[0] for e in c], [e[1] for e in c]) for c in subsets]

    @staticmethod
    def _log_normal(z: torch.Tensor, mu: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((z - mu).pow(2) * torch.exp(-lv) + lv + math.log(2 * math.pi)).sum(-1)

    def _log_q(
        self, z: torch.Tensor, comps: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """``log q(z | x_S)`` of the equal mixture of ``comps`` (leading dims of z kept)."""
        logs = torch.stack([self._log_normal(z, mu, lv) for mu, lv in comps])
        return torch.logsumexp(logs, 0) - math.log(len(comps))

    @staticmethod
    def _log_prior(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)

    def decode(
        self, z: torch.Tensor, modalities: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """modality -> the decoder's output at ``z`` (logits, or the gaussian mean)."""
        return {m: self.decoders[m](z) for m in (modalities or self.modalities)}

    def log_likelihood(self, m: str, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``log p(x_m | z)`` per row from the decoder output ``out`` (leading dims kept)."""
        lik = self.likelihoods[m]
        if lik == "categorical":
            logp = out.log_softmax(-1)
            idx = target.long().to(out.device).expand(out.shape[:-1])
            return logp.gather(-1, idx[..., None])[..., 0]
        target = target.to(out)
        if lik == "bernoulli":
            return -F.binary_cross_entropy_with_logits(
                out, target.expand_as(out), reduction="none"
            ).sum(-1)
        s = self.scale[m]
        return (-0.5 * ((target - out) / s).pow(2) - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(
            -1
        )

    def elbo(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """``ELBO(x_S)`` per row (one reparameterised sample; the posterior mean in eval
        mode), reconstructing the modalities in ``batch`` weighted by ``lambda_m``. A single
        Gaussian posterior (``poe``) has its KL in closed form; a mixture (``moe``) takes the
        stratified estimate ``mean_c [rec(z_c) + beta (log p(z_c) - log q(z_c | x_S))]``
        with ``z_c`` drawn from component ``c``."""
        return self._elbo(self._check(batch), generator)

    def _elbo(self, x: Batch, generator: torch.Generator | None) -> torch.Tensor:
        comps = self._components(x)

        def z_of(mu: torch.Tensor, lv: torch.Tensor) -> torch.Tensor:
            return self._draw(mu, lv, generator) if self.training else mu

        if len(comps) == 1:
            mu, lv = comps[0]
            z = z_of(mu, lv)
            kl = 0.5 * (lv.exp() + mu.pow(2) - 1 - lv).sum(-1)
            return self._reconstruction(z, x) - self.beta * kl
        terms = []
        for mu, lv in comps:  # stratified: one draw per component
            z = z_of(mu, lv)
            log_ratio = self._log_prior(z) - self._log_q(z, comps)
            terms.append(self._reconstruction(z, x) + self.beta * log_ratio)
        return torch.stack(terms).mean(0)

    @staticmethod
    def _draw(
        mu: torch.Tensor, lv: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """``mu + eps * sigma``, ``eps`` drawn on the CPU (reproducible on any device)."""
        eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device="cpu")
        return mu + eps.to(mu.device) * (0.5 * lv).exp()

    def _reconstruction(self, z: torch.Tensor, x: Batch, weighted: bool = True) -> torch.Tensor:
        """``sum_m lambda_m log p(x_m | z)`` (``lambda_m = 1`` unless ``weighted``; leading
        dims of ``z`` kept)."""
        out = self.decode(z, list(x))
        terms = [
            (self.weights[m] if weighted else 1.0) * self.log_likelihood(m, out[m], x[m]) for m in x
        ]
        return torch.stack(terms).sum(0)

    def subsets_for(
        self, present: Sequence[str], generator: torch.Generator | None = None
    ) -> list[tuple[str, ...]]:
        """The modality subsets whose ELBOs :meth:`loss` sums, for the modalities present."""
        present = tuple(m for m in self.modalities if m in present)
        if self.subsets == "joint" or len(present) == 1:
            return [present]
        singles = [(m,) for m in present]
        if self.subsets == "all":
            return nonempty_subsets(present)
        rest = [c for r in range(2, len(present)) for c in itertools.combinations(present, r)]
        picks: list[tuple[str, ...]] = []
        if rest and self.random_subsets:
            idx = torch.randint(len(rest), (self.random_subsets,), generator=generator)
            picks = [rest[int(i)] for i in idx]
        return [present, *singles, *picks]

    def loss(self, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """The negated sub-sampled ELBO, averaged over rows."""
        x = self._check(batch)
        terms = [
            self._elbo({m: x[m] for m in s}, generator).mean()
            for s in self.subsets_for(list(x), generator)
        ]
        return -torch.stack(terms).sum()

    # --- inference and evaluation -------------------------------------------------------
    @torch.no_grad()
    def predict(self, given: Batch, target: str) -> torch.Tensor:
        """The mean of ``p(x_target | z)`` at the posterior mean of ``q(z | x_given)`` (for
        a mixture: averaged over its components' means): class probabilities
        (categorical), pixel probabilities (bernoulli) or the mean."""
        if target not in self.dims:
            raise ValueError(f"target {target!r} is not a modality of the model {self.modalities}")
        comps = self._components(self._check(given, "given"))
        means = [self._mean(target, self.decoders[target](mu)) for mu, _ in comps]
        return torch.stack(means).mean(0)

    def _mean(self, m: str, out: torch.Tensor) -> torch.Tensor:
        lik = self.likelihoods[m]
        if lik == "categorical":
            return out.softmax(-1)
        return out.sigmoid() if lik == "bernoulli" else out

    @torch.no_grad()
    def sample(
        self,
        target: str,
        given: Batch | None = None,
        n: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The mean of ``p(x_target | z)`` at ``z`` drawn from ``q(z | x_given)`` (one per
        row of ``given``) or, without ``given``, from the prior (``n`` rows)."""
        if target not in self.dims:
            raise ValueError(f"target {target!r} is not a modality of the model {self.modalities}")
        p = next(self.parameters())
        if given is None:
            if n < 1:
                raise ValueError(f"n must be >= 1, got {n}")
            mu = torch.zeros(n, self.latent, dtype=p.dtype, device=p.device)
            lv = torch.zeros_like(mu)
        else:
            comps = self._components(self._check(given, "given"))
            mu, lv = comps[0]
            if len(comps) > 1:  # a mixture: one component per row, uniformly
                pick = torch.randint(len(comps), (len(mu),), generator=generator)
                rows = torch.arange(len(mu))
                mu = torch.stack([c[0] for c in comps])[pick.to(mu.device), rows.to(mu.device)]
                lv = torch.stack([c[1] for c in comps])[pick.to(lv.device), rows.to(lv.device)]
        return self._mean(target, self.decoders[target](self._draw(mu, lv, generator)))

    @torch.no_grad()
    def log_marginal(
        self,
        batch: Batch,
        samples: int = 100,
        generator: torch.Generator | None = None,
        chunk: int = 256,
    ) -> torch.Tensor:
        """IWAE estimate of ``log p(x_S)`` per row with ``samples`` draws from ``q(z | x_S)``:
        ``log (1/K) sum_k p(x_S | z_k) p(z_k) / q(z_k | x_S)`` (a lower bound that tightens
        as K grows; exact for any K when ``q`` is the true posterior). A mixture posterior is
        sampled stratified, ``samples`` draws from each component (still unbiased inside
        the log). The model's density: the training weights ``lambda_m`` do not enter."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if chunk < 1:
            raise ValueError(f"chunk (draws per step) must be >= 1, got {chunk}")
        x = self._check(batch)
        comps = self._components(x)
        parts = []
        for s in range(0, samples, chunk):
            k = min(chunk, samples - s)
            for mu, lv in comps:
                eps = torch.randn((k, *mu.shape), generator=generator, dtype=mu.dtype)
                z = mu + eps.to(mu.device) * (0.5 * lv).exp()  # (k, B, latent)
                logp = self._reconstruction(z, x, weighted=False)
                parts.append(logp + self._log_prior(z) - self._log_q(z, comps))
        w = torch.cat(parts)
        return torch.logsumexp(w, 0) - math.log(samples * len(comps))

    @torch.no_grad()
    def log_conditional(
        self,
        target: Batch,
        given: Batch,
        samples: int = 100,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``log p(x_T | x_G) = log p(x_T, x_G) - log p(x_G)`` per row, both IWAE estimates."""
        overlap = set(target) & set(given)
        if overlap:
            raise ValueError(f"target and given share modalities {sorted(overlap)}")
        joint = self.log_marginal({**given, **target}, samples, generator)
        return joint - self.log_marginal(given, samples, generator)

    @torch.no_grad()
    def class_log_posterior(
        self,
        given: Batch,
        target: str,
        samples: int = 100,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``log p(x_target = c | x_G)`` for every class ``c`` of a categorical modality,
        ``(B, classes)``: ``log p(c, x_G) - logsumexp_c' log p(c', x_G)``, each joint an IWAE
        estimate. Summing out the label gives ``log p(x_G)`` with the joint posteriors as
        proposals, so the single-modality posterior plays no part (the difference of two IWAE
        bounds in :meth:`log_conditional` is biased when that posterior is poor)."""
        if target not in self.dims or self.likelihoods[target] != "categorical":
            raise ValueError(f"target {target!r} must be a categorical modality of the model")
        if target in given:
            raise ValueError(f"target {target!r} is also in given")
        x = self._check(given, "given")
        rows = len(next(iter(x.values())))
        device = next(self.parameters()).device
        joint = torch.stack(
            [
                self.log_marginal(
                    {**x, target: torch.full((rows,), c, dtype=torch.long, device=device)},
                    samples,
                    generator,
                )
                for c in range(self.dims[target])
            ],
            1,
        )
        return joint - torch.logsumexp(joint, 1, keepdim=True)


def train_mvae(
    model: MVAE,
    data: Batch,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    anneal_epochs: int = 0,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    progress: bool | None = None,
) -> list[float]:
    """Train ``model`` on ``data`` (modality -> tensor, paired rows) with Adam on the
    sub-sampled ELBO; ``beta`` rises linearly from ``beta / anneal_epochs`` to ``beta`` over
    the first ``anneal_epochs`` epochs (KL annealing). Checkpoints after every epoch into
    ``checkpoint_dir`` and resumes from it exactly. Returns the per-epoch mean loss."""
    x = model._check(data, "data")
    n = len(next(iter(x.values())))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if anneal_epochs < 0:
        raise ValueError(f"anneal_epochs must be >= 0, got {anneal_epochs}")
    device = next(model.parameters()).device
    x = {m: v.to(device) for m, v in x.items()}
    beta = model.beta

    def batches(epoch: int) -> list[tuple[int, torch.Tensor, torch.Generator]]:
        # one generator per epoch draws the order, then every batch's samples in turn
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).to(device)
        return [(epoch, order[s : s + batch_size], g) for s in range(0, n, batch_size)]

    def loss(net: nn.Module, batch: tuple[int, torch.Tensor, torch.Generator]) -> torch.Tensor:
        epoch, idx, g = batch
        model.beta = beta * min(1.0, (epoch + 1) / anneal_epochs) if anneal_epochs else beta
        return model.loss({m: v[idx] for m, v in x.items()}, g)

    try:
        _, history = fit_module(
            "MVAE",
            lambda: model,
            batches,
            loss,
            epochs=epochs,
            lr=lr,
            weight_decay=weight_decay,
            optimizer="adam",
            seed=None,
            device=device,
            checkpoint_dir=checkpoint_dir,
            progress=progress,
        )
        return history
    finally:
        model.beta = beta
