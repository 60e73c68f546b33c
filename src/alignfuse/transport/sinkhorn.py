"""Entropic optimal transport by Sinkhorn iterations, stabilised in the scaling domain with
a log-domain fallback.

Balanced problem (``reg_m=None``): ``min_P <P, C> + reg KL(P | a b^T)`` over plans with
marginals ``a`` and ``b``. Unbalanced (``reg_m = tau``): the marginal constraints become
penalties ``tau KL(P 1 | a) + tau KL(P^T 1 | b)`` (Chizat et al. 2018), as POT's
``sinkhorn_unbalanced`` with ``reg_type="kl"``.

Solvers (``method``). ``"log"``: every half-step is a log-sum-exp over the ``n x m``
log-kernel (robust at any ``reg``, one ``exp`` per entry per half-step). ``"auto"`` (default,
float32 / float64): stabilised Sinkhorn (Schmitzer 2019, POT's ``sinkhorn_stabilized``): the
log-potentials found so far are absorbed into the kernel ``K = exp(lk + alpha + beta)`` and
the iterations update scalings with two matrix-vector products (no ``exp``), absorbing them
into ``alpha, beta`` again (one ``exp`` pass) when one leaves ``[1 / tau, tau]``
(``tau = 1e50`` in float64, ``1e10`` in float32); if a scaling still overflows (a product
that underflowed to zero), the solve continues in the log domain from the last finite
iterate. Both start from row potentials that put each row's largest kernel entry at 1 and
take the same steps: the same potentials, plan and iteration count up to rounding. The
matrix-vector products go through :func:`alignfuse._matmul.bmv` (numpy's BLAS on the CPU).

The iterations run without autograd; one last differentiable update from the converged
potentials then gives the gradients of the entropic value (envelope theorem: the gradient
with respect to the cost is the plan), so backpropagating through a solve costs one step.
Without gradients, the stabilised solver computes that update and the plan from its
scalings instead (the kernel's memory becomes the plan).
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
        domain: where the iterations ran: ``"scaling"``, ``"log"``, or ``"scaling+log"``
            (the stabilised solver fell back to the log domain).
    """

    value: torch.Tensor
    cost: torch.Tensor
    plan: torch.Tensor
    f: torch.Tensor
    g: torch.Tensor
    iterations: int
    converged: torch.Tensor
    marginal_error: torch.Tensor
    domain: str = "log"


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
    method: str = "auto",
) -> TransportResult:
    """Entropic OT between weights ``a`` and ``b`` under ``cost`` by Sinkhorn iterations.

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
        method: ``"auto"`` (stabilised scaling-domain iterations for float32 / float64
            costs, falling back to the log domain when a scaling overflows) or ``"log"``
            (log-domain iterations throughout); see the module docstring.
    """
    la_w, lb_w, c, single = check_problem(a, b, cost, reg)
    if method not in ("auto", "log"):
        raise ValueError(f"method must be 'auto' or 'log', got {method!r}")
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

    loop = _Loop(c, reg, la, lb, la_w, lb_w, fi, reg_m is None, max_iter, tol, check_every)
    with torch.no_grad():
        # start from row potentials that put each row's largest kernel entry at 1, so no
        # row of the kernel underflows (both domains start here and take the same steps)
        u = loop.start_rows()
        v = torch.zeros_like(lb)
        domain = "log"
        if method == "auto" and c.dtype in (torch.float32, torch.float64):
            u, v, fell_back = loop.scaling(u, v)
            domain = "scaling+log" if fell_back else "scaling"
        if domain != "scaling":
            lk = log_kernel(c)
            lk_t = lk.transpose(1, 2).contiguous()  # both reductions over contiguous rows
            u, v = loop.log(lk, lk_t, u, v)
    err, it = loop.err, loop.it
    converged = err <= tol
    if warn and not bool(converged.all()):
        warnings.warn(
            f"Sinkhorn did not converge in max_iter={max_iter} iterations (error "
            f"{float(err.max()):.3g} > tol={tol:g}); raise max_iter or reg",
            ConvergenceWarning,
            stacklevel=2,
        )
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in (c, la_w, lb_w))
    if domain == "scaling" and not grads:
        # the last update and the plan from the scalings (no log-sum-exp, no new n x m
        # tensor: the kernel becomes the plan in place)
        plan, u, v = loop.final_plan()
    else:
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
    out = TransportResult(value, transport, plan, f, g, it, converged, err, domain)
    if single:
        out = TransportResult(
            value[0], transport[0], plan[0], f[0], g[0], it, converged[0], err[0], domain
        )
    return out


class _Loop:
    """Sinkhorn iterations on log-scalings ``u, v`` (``P = exp(lk + u + v)`` with the
    log-kernel ``lk = -C / reg``, plus ``log a_i + log b_j`` for unbalanced problems), in the
    log domain or the stabilised scaling domain, with the stopping rule of both."""

    def __init__(
        self,
        c: torch.Tensor,
        reg: float,
        la: torch.Tensor,
        lb: torch.Tensor,
        la_w: torch.Tensor,
        lb_w: torch.Tensor,
        fi: float,
        balanced: bool,
        max_iter: int,
        tol: float,
        check_every: int,
    ) -> None:
        self.c, self.reg = c, reg
        self.la, self.lb, self.a, self.b, self.fi = la, lb, la_w, lb_w, fi
        self.balanced, self.max_iter, self.tol, self.every = balanced, max_iter, tol, check_every
        self.it = 0
        self.err = torch.full(la.shape[:1], math.inf, dtype=la.dtype, device=la.device)
        self.check: tuple[torch.Tensor, torch.Tensor] | None = None
        self.pos_a, self.pos_b = la_w > 0, lb_w > 0
        # the scaling domain's state: kernel with absorbed potentials alpha, beta; scalings
        self.kern = self.alpha = self.beta = self.su = self.sv = self.ea = self.eb = la

    def start_rows(self) -> torch.Tensor:
        """Row potentials ``-max_j lk_ij`` (-inf for rows of zero mass)."""
        top = (
            (-self.c / self.reg).amax(2)
            if self.balanced
            else (self.lb[:, None, :] - self.c / self.reg).amax(2)
        )
        if not self.balanced:
            top = top + self.la
        return torch.where(self.pos_a, -top, torch.full_like(top, -math.inf))

    def _due(self) -> bool:
        return (self.it - 1) % self.every == 0 or self.it >= self.max_iter

    def _unbalanced_done(self, u: torch.Tensor, v: torch.Tensor) -> bool:
        """The error of unbalanced problems: the largest change of the log-scalings since
        the last check (from the start at the first)."""
        last = self.check if self.check is not None else (self.start_u, torch.zeros_like(v))
        du = (u - last[0]).abs().amax(-1)
        dv = (v - last[1]).abs().amax(-1)
        self.err = torch.maximum(torch.nan_to_num(du), torch.nan_to_num(dv))
        self.check = (u, v)
        return bool((self.err <= self.tol).all())

    def log(
        self, lk: torch.Tensor, lk_t: torch.Tensor, u: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-domain iterations: each half-step a log-sum-exp over the log-kernel."""
        fi, la, lb = self.fi, self.la, self.lb
        if self.it == 0:
            self.start_u = u
        while self.it < self.max_iter:
            v = fi * (lb - _lse_rows(lk_t, u))
            u = fi * (la - _lse_rows(lk, v))
            self.it += 1
            if self._due():
                if self.balanced:
                    cols = torch.exp(v + _lse_rows(lk_t, u))
                    self.err = torch.linalg.vector_norm(cols - self.b, dim=-1)
                    done = bool((self.err <= self.tol).all())
                else:
                    done = self._unbalanced_done(u, v)
                if done:
                    break
        return u, v

    # ------------------------------------------------------------------- scaling domain

    def _absorb(self, alpha: torch.Tensor, beta: torch.Tensor) -> None:
        """Potentials ``alpha, beta`` into the kernel; scalings back to 1 (0: zero mass)."""
        fi, dt = self.fi, self.c.dtype
        self.alpha, self.beta = alpha, beta
        rows, cols = alpha, beta
        if not self.balanced:  # lk holds log a_i + log b_j too (finite where mass is)
            rows = rows + torch.where(self.pos_a, self.la, torch.zeros_like(self.la))
            cols = cols + torch.where(self.pos_b, self.lb, torch.zeros_like(self.lb))
        kern = self.c * (-1.0 / self.reg)
        kern.add_(rows[:, :, None]).add_(cols[:, None, :]).exp_()
        self.kern = kern
        # the marginal terms of the updates with the absorbed potentials folded in
        ea = torch.exp(fi * self.la + (fi - 1) * alpha) if fi != 1 else self.a
        eb = torch.exp(fi * self.lb + (fi - 1) * beta) if fi != 1 else self.b
        self.ea = torch.where(self.pos_a, ea, torch.zeros_like(ea))
        self.eb = torch.where(self.pos_b, eb, torch.zeros_like(eb))
        self.su, self.sv = self.pos_a.to(dt), self.pos_b.to(dt)

    def _update(self, weights: torch.Tensor, pos: torch.Tensor, prod: torch.Tensor) -> torch.Tensor:
        out = weights / prod if self.fi == 1 else weights * prod.pow(-self.fi)
        return torch.where(pos, out, torch.zeros_like(out))

    def _logs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The log-scalings ``u = alpha + log su``, ``v = beta + log sv`` (-inf: no mass)."""

        def one(x: torch.Tensor, base: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            val = base + torch.where(x > 0, x, torch.ones_like(x)).log()
            return torch.where(pos, val, torch.full_like(val, -math.inf))

        return one(self.su, self.alpha, self.pos_a), one(self.sv, self.beta, self.pos_b)

    def scaling(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Stabilised iterations from log-scalings ``u, v``: scalings ``su, sv`` of the kernel
        with the potentials ``alpha, beta`` absorbed, updated by matrix-vector products,
        absorbed again when one leaves ``[1 / tau, tau]``. Returns log-scalings and whether
        a scaling overflowed (then they are the last finite iterate, for the log domain)."""
        from alignfuse._matmul import bmv, bvm

        tau = 1e50 if self.c.dtype == torch.float64 else 1e10
        pos_a, pos_b = self.pos_a, self.pos_b
        self.start_u = u
        self._absorb(u, v)
        while self.it < self.max_iter:
            sv = self._update(self.eb, pos_b, bvm(self.su, self.kern))
            su = self._update(self.ea, pos_a, bmv(self.kern, sv))
            big = torch.maximum(su.amax(), sv.amax())
            small = torch.minimum(
                torch.where(pos_a, su, torch.ones_like(su)).amin(),
                torch.where(pos_b, sv, torch.ones_like(sv)).amin(),
            )
            if not bool(torch.isfinite(big) & (small > 0)):  # the kernel underflowed
                u, v = self._logs()
                return u, v, True
            self.su, self.sv = su, sv
            self.it += 1
            if self._due():
                if self.balanced:
                    cols = self.sv * bvm(self.su, self.kern)
                    self.err = torch.linalg.vector_norm(cols - self.b, dim=-1)
                    done = bool((self.err <= self.tol).all())
                else:
                    done = self._unbalanced_done(*self._logs())
                if done:
                    break
            if bool((big > tau) | (small < 1 / tau)):
                self._absorb(*self._logs())
        u, v = self._logs()
        return u, v, False

    def final_plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One more update from the scalings, and the plan ``su K sv`` (the kernel's memory
        becomes the plan's); with the log-scalings ``u, v``."""
        from alignfuse._matmul import bmv, bvm

        self.sv = self._update(self.eb, self.pos_b, bvm(self.su, self.kern))
        self.su = self._update(self.ea, self.pos_a, bmv(self.kern, self.sv))
        plan = self.kern.mul_(self.su[:, :, None]).mul_(self.sv[:, None, :])
        u, v = self._logs()
        return plan, u, v


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


def sinkhorn_layer(
    scores: torch.Tensor,
    row_mass: torch.Tensor | None = None,
    col_mass: torch.Tensor | None = None,
    n_iters: int = 20,
) -> torch.Tensor:
    """Log of the plan ``P = diag(u) exp(scores) diag(v)`` with the given row and column
    masses (default: rows 1 each, columns ``n / m`` each), by ``n_iters`` unrolled log-domain
    Sinkhorn iterations; differentiable by autograd through every iteration (a layer of a
    learned matcher, as in SuperGlue). At convergence its plan is :func:`sinkhorn`'s for the
    cost ``-scores`` at ``reg=1``; :func:`sinkhorn` solves to a tolerance and differentiates
    the entropic value by the envelope theorem instead.

    Example:
        >>> logp = sinkhorn_layer(torch.randn(6, 3), n_iters=50)
        >>> [round(float(x), 4) for x in logp.exp().sum(0)]
        [2.0, 2.0, 2.0]
    """
    if scores.ndim != 2 or 0 in scores.shape:
        raise ValueError(
            f"scores must be a non-empty (n, m) matrix, got shape {tuple(scores.shape)}"
        )
    n, m = scores.shape
    lr = (
        torch.zeros(n, dtype=scores.dtype, device=scores.device)
        if row_mass is None
        else row_mass.log()
    )
    lc = (
        torch.full((m,), math.log(n / m), dtype=scores.dtype, device=scores.device)
        if col_mass is None
        else col_mass.log()
    )
    u = torch.zeros_like(lr)
    v = torch.zeros_like(lc)
    for _ in range(n_iters):
        u = lr - torch.logsumexp(scores + v[None, :], dim=1)
        v = lc - torch.logsumexp(scores + u[:, None], dim=0)
    return scores + u[:, None] + v[None, :]
