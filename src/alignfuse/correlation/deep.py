"""Deep CCA (Andrew et al. 2013) and the deep canonically correlated autoencoder DCCAE (Wang
et al. 2015, "On Deep Multi-View Representation Learning").

Two networks ``f``, ``g`` map the views to ``out_dim`` features trained to maximise the total
canonical correlation of a minibatch (:func:`alignfuse.correlation.cca_loss`, ridge on the
covariances). DCCAE adds decoders ``p``, ``q`` and the reconstruction error:

    DCCA:   min -corr(f(X), g(Y))
    DCCAE:  min -corr(f(X), g(Y)) + lambda / N (|X - p(f(X))|^2 + |Y - q(g(Y))|^2)

After training, a linear CCA on the training outputs gives the canonical projections, so
``transform`` and ``score`` mean what they mean for :class:`CCA`. Inputs are numpy arrays or
tensors; training shows a progress bar, writes an atomic checkpoint (safetensors + JSON)
after every epoch when ``checkpoint_dir`` is set, resumes from it, and stops with a clear
error if the objective becomes NaN.
"""

from __future__ import annotations

import torch
from torch import nn

from alignfuse.correlation._base import (
    Array,
    Estimator,
    as_matrix,
    as_output,
    check_components,
    check_views,
)
from alignfuse.correlation.cca import CCA
from alignfuse.correlation.loss import cca_loss
from alignfuse.engine.fit import fit_module
from alignfuse.layers import mlp


class DCCA(Estimator):
    """Deep CCA; ``recon_weight > 0`` makes it DCCAE.

    Args:
        n_components: canonical pairs kept (at most ``out_dim``).
        hidden: widths of the hidden layers of each network.
        out_dim: output width of each network (default ``n_components``).
        reg: ridge on the batch covariances of the objective.
        recon_weight: ``lambda`` of DCCAE (0 = DCCA).
        epochs, batch_size, lr, weight_decay: AdamW training; large batches estimate the
            covariances better (the paper uses full-batch L-BFGS).
        seed: initialisation and batch order.
        checkpoint_dir: write a checkpoint each epoch and resume from it.
        progress: show a progress bar (default: when stderr is a terminal).
    """

    def __init__(
        self,
        n_components: int = 10,
        hidden: tuple[int, ...] = (256, 256),
        out_dim: int | None = None,
        reg: float = 1e-3,
        recon_weight: float = 0.0,
        epochs: int = 100,
        batch_size: int = 512,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        seed: int = 0,
        checkpoint_dir: str | None = None,
        progress: bool | None = None,
    ) -> None:
        self.n_components = n_components
        self.hidden = hidden
        self.out_dim = out_dim
        self.reg = reg
        self.recon_weight = recon_weight
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.progress = progress

    def _build(self, p: int, q: int, dtype: torch.dtype, device: torch.device) -> nn.ModuleDict:
        o = self.out_dim or self.n_components
        hid = list(self.hidden)
        nets = {"f": mlp([p, *hid, o]), "g": mlp([q, *hid, o])}
        if self.recon_weight > 0:
            nets["p"] = mlp([o, *hid[::-1], p])
            nets["q"] = mlp([o, *hid[::-1], q])
        return nn.ModuleDict(nets).to(dtype=dtype, device=device)

    def _objective(self, nets: nn.ModuleDict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hx, hy = nets["f"](x), nets["g"](y)
        loss = cca_loss(hx, hy, None, self.reg)
        if self.recon_weight > 0:
            rec = (nets["p"](hx) - x).pow(2).sum(1).mean() + (nets["q"](hy) - y).pow(2).sum(
                1
            ).mean()
            loss = loss + self.recon_weight * rec
        return loss

    def fit(self, X: Array, Y: Array) -> DCCA:
        """Train the networks, then fit the linear CCA on their training outputs."""
        x, was_numpy = as_matrix(X, "X")
        y, _ = as_matrix(Y, "Y")
        y = y.to(x)
        check_views(x, y)
        o = self.out_dim or self.n_components
        check_components(self.n_components, o, "out_dim")
        if self.batch_size < 2 * o:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be at least 2 x out_dim ({o}) to estimate covariances"
            )
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        self._mu_x, self._sd_x = x.mean(0), x.std(0).clamp_min(1e-8)
        self._mu_y, self._sd_y = y.mean(0), y.std(0).clamp_min(1e-8)
        xs, ys = (x - self._mu_x) / self._sd_x, (y - self._mu_y) / self._sd_y
        n, bs = x.shape[0], self.batch_size

        def batches(epoch: int) -> list[torch.Tensor]:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).to(x.device)
            return [order[s : s + bs] for s in range(0, n - bs // 2, bs)]

        def objective(nets: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            return self._objective(nets, xs[idx], ys[idx])  # type: ignore[arg-type]

        nets, history = fit_module(
            type(self).__name__,
            lambda: self._build(x.shape[1], y.shape[1], x.dtype, x.device),
            batches,
            objective,
            epochs=self.epochs,
            lr=self.lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
            device=x.device,
            checkpoint_dir=self.checkpoint_dir,
            progress=self.progress,
        )
        assert isinstance(nets, nn.ModuleDict)
        self.nets_ = nets.eval()
        self.history_ = history
        with torch.no_grad():
            hx, hy = nets["f"](xs), nets["g"](ys)
        self.cca_ = CCA(self.n_components, reg_x=self.reg, reg_y=self.reg).fit(hx, hy)
        self._was_numpy = was_numpy
        return self

    def _features(
        self, data: Array, name: str, net: str, mu: torch.Tensor, sd: torch.Tensor
    ) -> tuple[torch.Tensor, bool]:
        t, was_numpy = as_matrix(data, name)
        if t.shape[1] != mu.shape[0]:
            raise ValueError(
                f"{name} has {t.shape[1]} features, the model was fitted on {mu.shape[0]}"
            )
        t = t.to(mu)
        with torch.no_grad():
            return self.nets_[net]((t - mu) / sd), was_numpy

    def transform(self, X: Array, Y: Array | None = None) -> Array | tuple[Array, Array]:
        """Canonical projections of the network outputs."""
        self._check_fitted("nets_")
        hx, was_numpy = self._features(X, "X", "f", self._mu_x, self._sd_x)
        zx = self.cca_.transform(hx)
        assert isinstance(zx, torch.Tensor)
        if Y is None:
            return as_output(zx, was_numpy)
        hy, _ = self._features(Y, "Y", "g", self._mu_y, self._sd_y)
        pair = self.cca_.transform(hx, hy)
        assert isinstance(pair, tuple)
        zx2, zy2 = (torch.as_tensor(v) for v in pair)
        return as_output(zx2, was_numpy), as_output(zy2, was_numpy)

    def score(self, X: Array, Y: Array) -> Array:
        """Correlation of each pair of canonical projections on the given data."""
        from alignfuse.correlation.cca import paired_correlations

        out = self.transform(X, Y)
        assert isinstance(out, tuple)
        return paired_correlations(*out)


class DCCAE(DCCA):
    """Deep canonically correlated autoencoders (Wang et al. 2015): DCCA plus reconstruction
    with weight ``recon_weight`` (default 1e-3)."""

    def __init__(
        self,
        n_components: int = 10,
        hidden: tuple[int, ...] = (256, 256),
        out_dim: int | None = None,
        reg: float = 1e-3,
        recon_weight: float = 1e-3,
        epochs: int = 100,
        batch_size: int = 512,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        seed: int = 0,
        checkpoint_dir: str | None = None,
        progress: bool | None = None,
    ) -> None:
        if recon_weight <= 0:
            raise ValueError(f"DCCAE needs recon_weight > 0, got {recon_weight}")
        super().__init__(
            n_components,
            hidden,
            out_dim,
            reg,
            recon_weight,
            epochs,
            batch_size,
            lr,
            weight_decay,
            seed,
            checkpoint_dir,
            progress,
        )
