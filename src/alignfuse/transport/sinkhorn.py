"""Entropic optimal transport by Sinkhorn iterations in the log domain.

Balanced problem (``reg_m=None``): ``min_P <P, C> + reg KL(P | a b^T)`` over plans with
marginals ``a`` and ``b``. Unbalanced (``reg_m = tau``): the marginal constraints become
penalties ``tau KL(P 1 | a) + tau KL(P^T 1 | b)`` (Chizat et al. 2018), as POT's
``sinkhorn_unbalanced`` with ``reg_type="kl"``.

The iterations run without autograd; one last differentiable update from the converged
potentials then gives the gradients of the entropic value (envelope theorem: the gradient
with respect to the cost is the plan), so backpropagating through a solve costs one step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from alignfuse.errors import ConvergenceWarning


@dataclass
class TransportResult:
    """The outcome of an entropic transport solve (batched: leading ``B`` dimension).

    Attributes:
        value: the entropic objective at the solution (for balanced problems the dual value
            ``<f, a> + <g, b>``); differentiable in the cost and the weights.
        cost: the transport cost ``<P, C>`` (what POT's ``sinkhorn2`` returns).
        plan: the transport plan ``P``.
        f, g: dual potentials (``P = a_i b_j exp((f_i + g_j - C_ij) / reg)``).
        iterations: Sinkhorn iterations run.
        converged: whether the tolerance was reached (per problem).
        marginal_error: L2 error of the plan's column sums against ``b`` (balanced) or the
            last change of the log-scalings (unbalanced).
    """

    value: torch.Tensor
    cost: torch.Tensor
    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    iterations: int
    converged: torch.Tensor
    marginal_error: torch.Tensor


def _weights(w: Any, n: int, b: int, name: str, like: torch.Tensor) -> torch.Tensor:
    if w is None:
        return torch.full((b, n), 1.0 / n, dtype=like.dtype, device=like.device)
    t = torch.as_tensor(w, dtype=like.dtype, device=like.device)
    if t.ndim == 1:
        t = t.expand(b, -1)
    if tuple(t.shape) != (b, n):
        raise ValueError(
            f"{name} must have shape ({n},) or ({b}, {n}) to match the cost, got {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    if (t.sum(-1) <= 0).any():
        raise ValueError(f"{name} must have positive total mass")
    return t


def check_problem(
    a: Any, b: Any, cost: Any, reg: float, name: str = "cost"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Validate an OT problem; return batched ``(a, b, cost)`` and whether it was unbatched."""
    c = torch.as_tensor(cost)
    if not c.is_floating_point():
        c = c.double()
    single = c.ndim == 2
    if single:
        c = c[None]
    if c.ndim != 3:
        raise ValueError(f"{name} must be (n, m) or (B, n, m), got shape {tuple(c.shape)}")
    if 0 in c.shape:
        raise ValueError(f"{name} is empty (shape {tuple(c.shape)})")
    if not torch.isfinite(c).all():
        raise ValueError(f"{name} contains NaN or Inf")
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(
            f"reg (entropic regularisation) must be a positive finite number, got {reg!r}"
        )
    bsz, n, m = c.shape
    return _weights(a, n, bsz, "a", c), _weights(b, m, bsz, "b", c), c, single


def _log(w: torch.Tensor) -> torch.Tensor:
    return torch.where(
        w > 0, w.clamp_min(torch.finfo(w.dtype).tiny).log(), torch.full_like(w, -math.inf)
    )


def sinkhorn(
    a: Any,
    b: Any,
    cost: Any,
    *,
    reg: float,
    reg_m: float | None = None,
    max_iter: int = 1000,
    tol: float | None = None,
    check_every: int = 10,
    warn: bool = True,
) -> TransportResult:
    """Entropic OT between weights ``a`` and ``b`` under ``cost``, log-domain Sinkhorn.

    Args:
        a, b: weights ``(n,)`` / ``(B, n)`` and ``(m,)`` / ``(B, m)``; ``None`` for uniform.
            Balanced problems need equal total mass.
        cost: ``(n, m)`` or ``(B, n, m)``.
        reg: entropic regularisation (> 0); smaller is closer to exact OT and slower.
        reg_m: marginal relaxation ``tau`` of unbalanced OT (``None``: balanced).
        max_iter, tol: stop after ``max_iter`` iterations or when the error (checked every
            ``check_every`` iterations, as POT) is at most ``tol``; by default 1e-9 in float64
            (POT's default) and 1e-6 in lower precision, where 1e-9 is out of reach.
        warn: warn with :class:`~alignfuse.errors.ConvergenceWarning` if not converged.
    """
    la_w, lb_w, c, single = check_problem(a, b, cost, reg)
    if reg_m is not None and not (isinstance(reg_m, (int, float)) and reg_m > 0):
        raise ValueError(
            f"reg_m (marginal relaxation) must be a positive number or None, got {reg_m!r}"
        )
    if reg_m is None:
        ma, mb = la_w.sum(-1), lb_w.sum(-1)
        if not torch.allclose(ma, mb, rtol=1e-6, atol=0):
            raise ValueError(
                f"a and b must have the same total mass for balanced OT (got {ma.tolist()} and "
                f"{mb.tolist()}); pass reg_m for unbalanced OT"
            )
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if tol is None:
        tol = 1e-9 if c.dtype == torch.float64 else 1e-6
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    la, lb = _log(la_w), _log(lb_w)
    fi = 1.0 if reg_m is None else reg_m / (reg_m + reg)

    def log_kernel(cc: torch.Tensor) -> torch.Tensor:
        k = -cc / reg
        return k if reg_m is None else k + la[:, :, None] + lb[:, None, :]

    bsz, n, m = c.shape
    with torch.no_grad():
        lk = log_kernel(c)
        lk_t = lk.transpose(1, 2).contiguous()  # both reductions run over contiguous rows
        u = torch.zeros(bsz, n, dtype=c.dtype, device=c.device)
        v = torch.zeros(bsz, m, dtype=c.dtype, device=c.device)
        err = torch.full((bsz,), math.inf, dtype=c.dtype, device=c.device)
        u_check, v_check = u, v
        it = 0
        while it < max_iter:
            v = fi * (lb - _lse_rows(lk_t, u))
            u = fi * (la - _lse_rows(lk, v))
            it += 1
            if (it - 1) % check_every == 0 or it == max_iter:
                if reg_m is None:
                    cols = torch.exp(v + _lse_rows(lk_t, u))
                    err = torch.linalg.vector_norm(cols - lb_w, dim=-1)
                else:
                    du = (u - u_check).abs().amax(-1)
                    dv = (v - v_check).abs().amax(-1)
                    err = torch.maximum(du, dv)
                    u_check, v_check = u, v
                if bool((err <= tol).all()):
                    break
    converged = err <= tol
    if warn and not bool(converged.all()):
        warnings.warn(
            f"Sinkhorn did not converge in max_iter={max_iter} iterations (error "
            f"{float(err.max()):.3g} > tol={tol:g}); raise max_iter or reg",
            ConvergenceWarning,
            stacklevel=2,
        )
    # one differentiable update from the detached potentials (envelope gradients)
    lk = log_kernel(c)
    v = fi * (lb - torch.logsumexp(lk + u.detach()[:, :, None], dim=1))
    u = fi * (la - torch.logsumexp(lk + v[:, None, :], dim=2))
    plan = torch.exp(lk + u[:, :, None] + v[:, None, :])
    # potentials of P = a b^T exp((f + g - C) / reg)
    if reg_m is None:
        f = reg * torch.where(la_w > 0, u - la, torch.zeros_like(u))
        g = reg * torch.where(lb_w > 0, v - lb, torch.zeros_like(v))
    else:
        f, g = reg * u, reg * v
    transport = (plan * c).sum((1, 2))
    if reg_m is None:
        value = (la_w * f).sum(-1) + (lb_w * g).sum(-1)
    else:
        value = (
            transport
            + reg * _kl(plan, la_w[:, :, None] * lb_w[:, None, :])
            + reg_m * (_kl(plan.sum(2), la_w) + _kl(plan.sum(1), lb_w))
        )
    out = TransportResult(value, transport, plan, f, g, it, converged, err)
    if single:
        out = TransportResult(value[0], transport[0], plan[0], f[0], g[0], it, converged[0], err[0])
    return out


def _lse_rows(base: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """``logsumexp(base + add[:, None, :], dim=2)`` with in-place work (no autograd)."""
    t = base + add[:, None, :]
    mx = t.amax(2, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    return t.sub_(mx).exp_().sum(2).log_() + mx[..., 0]


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Generalised KL divergence sum(p log(p / q) - p + q) over all but the batch dimension."""
    dims = tuple(range(1, p.ndim))
    ratio = torch.where(p > 0, p * (_log(p) - _log(q)), torch.zeros_like(p))
    return (ratio - p + q).sum(dims)


def sinkhorn_divergence(
    x: Any,
    y: Any,
    a: Any = None,
    b: Any = None,
    *,
    reg: float,
    metric: str = "sqeuclidean",
    debias_value: str = "entropic",
    max_iter: int = 1000,
    tol: float | None = None,
) -> torch.Tensor:
    """Sinkhorn divergence ``S(a, b) = OT(a, b) - (OT(a, a) + OT(b, b)) / 2`` between point
    clouds ``x`` ``(n, d)`` / ``(B, n, d)`` and ``y`` with weights ``a``, ``b``.

    ``debias_value="entropic"`` uses the entropic objective (Feydy et al. 2019: then ``S`` is
    non-negative and zero only for equal measures); ``"linear"`` uses ``<P, C>``, as POT's
    ``empirical_sinkhorn_divergence``. ``metric``: ``"sqeuclidean"`` or ``"euclidean"``.
    """
    if debias_value not in ("entropic", "linear"):
        raise ValueError(f"debias_value must be 'entropic' or 'linear', got {debias_value!r}")
    xs = torch.as_tensor(x)
    ys = torch.as_tensor(y).to(xs)
    if not xs.is_floating_point():
        xs, ys = xs.double(), ys.double()
    if xs.ndim not in (2, 3) or ys.ndim != xs.ndim or xs.shape[-1] != ys.shape[-1]:
        raise ValueError(
            f"x and y must be point clouds (n, d) / (B, n, d) with the same d, got "
            f"{tuple(xs.shape)} and {tuple(ys.shape)}"
        )

    def c(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if metric == "sqeuclidean":
            return torch.cdist(p, q).pow(2)
        if metric == "euclidean":
            return torch.cdist(p, q)
        raise ValueError(f"metric must be 'sqeuclidean' or 'euclidean', got {metric!r}")

    def ot(p: torch.Tensor, q: torch.Tensor, wp: Any, wq: Any) -> torch.Tensor:
        r = sinkhorn(wp, wq, c(p, q), reg=reg, max_iter=max_iter, tol=tol)
        return r.value if debias_value == "entropic" else r.cost

    return ot(xs, ys, a, b) - (ot(xs, xs, a, a) + ot(ys, ys, b, b)) / 2
