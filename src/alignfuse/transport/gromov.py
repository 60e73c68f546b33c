"""Entropic Gromov-Wasserstein and fused Gromov-Wasserstein (Peyré et al. 2016; Vayer et al.
2019), with the square loss, by projected mirror descent: each outer step solves an entropic
OT problem (:func:`~alignfuse.transport.sinkhorn`) under the linearised GW cost, as POT's
``entropic_gromov_wasserstein`` (solver "PGD").

GW compares two metric-measure spaces through their intra-domain structure only (``C1``
``(n, n)``, ``C2`` ``(m, m)``), so it aligns sets that share no feature space; the fused
variant mixes in a cross-domain feature cost ``M`` with weight ``1 - alpha``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from alignfuse.errors import ConvergenceWarning
from alignfuse.transport.sinkhorn import TransportResult, check_problem, sinkhorn


def _structure(c: Any, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    t = torch.as_tensor(c)
    if like is not None:
        t = t.to(like)
    elif not t.is_floating_point():
        t = t.double()
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[1] != t.shape[2] or t.shape[1] == 0:
        raise ValueError(
            f"{name} must be a square (n, n) or (B, n, n) matrix, got shape {tuple(torch.as_tensor(c).shape)}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def _gw_parts(c1: torch.Tensor, c2: torch.Tensor, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    # square loss: L(x, y) = x^2 + y^2 - 2 x y; constC = C1^2 p 1^T + 1 q^T (C2^2)^T
    return (c1.pow(2) @ p[:, :, None]) + (c2.pow(2) @ q[:, :, None]).transpose(1, 2)


def _gw_tensor(
    const: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """sum_kl L(C1_ik, C2_jl) T_kl for every (i, j)."""
    return const - 2 * c1 @ t @ c2.transpose(1, 2)


def _solve(
    c1: Any,
    c2: Any,
    p: Any,
    q: Any,
    m: Any,
    alpha: float,
    epsilon: float,
    max_iter: int,
    tol: float | None,
    sinkhorn_max_iter: int,
    warn: bool,
) -> TransportResult:
    C1 = _structure(c1, "C1")
    C2 = _structure(c2, "C2", like=C1)
    if C1.shape[0] != C2.shape[0]:
        raise ValueError(
            f"C1 and C2 must hold the same number of problems, got {C1.shape[0]} and {C2.shape[0]}"
        )
    single = torch.as_tensor(c1).ndim == 2
    bsz, n, mm = C1.shape[0], C1.shape[1], C2.shape[1]
    if m is None:
        feat = torch.zeros(bsz, n, mm, dtype=C1.dtype, device=C1.device)
    else:
        feat = torch.as_tensor(m).to(C1)
        if feat.ndim == 2:
            feat = feat[None]
        if tuple(feat.shape[1:]) != (n, mm) or feat.shape[0] not in (1, bsz):
            raise ValueError(
                f"M must have shape ({n}, {mm}) or ({bsz}, {n}, {mm}), got {tuple(torch.as_tensor(m).shape)}"
            )
        feat = feat.expand(bsz, n, mm)
    pw, qw, feat, _ = check_problem(p, q, feat, epsilon, name="M")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha!r}")
    if tol is None:
        tol = 1e-9 if C1.dtype == torch.float64 else 1e-6
    const = _gw_parts(C1, C2, pw, qw)
    t = pw[:, :, None] * qw[:, None, :]
    err = torch.full((bsz,), float("inf"), dtype=C1.dtype, device=C1.device)
    it = 0
    with torch.no_grad():
        while it < max_iter:
            prev = t
            lin = alpha * 2 * _gw_tensor(const, C1, C2, t) + (1 - alpha) * feat
            t = sinkhorn(
                pw, qw, lin, reg=epsilon, max_iter=sinkhorn_max_iter, tol=tol, warn=False
            ).plan
            if it % 10 == 0:
                err = torch.linalg.matrix_norm(t - prev)
                if bool((err <= tol).all()):
                    it += 1
                    break
            it += 1
    converged = err <= tol
    if warn and not bool(converged.all()):
        warnings.warn(
            f"Gromov-Wasserstein did not converge in max_iter={max_iter} outer iterations "
            f"(change {float(err.max()):.3g} > tol={tol:g}); raise max_iter or epsilon",
            ConvergenceWarning,
            stacklevel=3,
        )
    # the objective at the plan, differentiable in the inputs through the plan's last solve
    lin = alpha * 2 * _gw_tensor(const, C1, C2, t.detach()) + (1 - alpha) * feat
    res = sinkhorn(pw, qw, lin, reg=epsilon, max_iter=sinkhorn_max_iter, tol=tol, warn=False)
    plan = res.plan
    gw = (_gw_tensor(const, C1, C2, plan) * plan).sum((1, 2))
    value = alpha * gw + (1 - alpha) * (feat * plan).sum((1, 2))
    out = TransportResult(value, value, plan, res.f, res.g, it, converged, err)
    if single:
        out = TransportResult(
            value[0], value[0], plan[0], res.f[0], res.g[0], it, converged[0], err[0]
        )
    return out


def entropic_gromov_wasserstein(
    C1: Any,
    C2: Any,
    p: Any = None,
    q: Any = None,
    *,
    epsilon: float = 0.1,
    max_iter: int = 1000,
    tol: float | None = None,
    sinkhorn_max_iter: int = 1000,
    warn: bool = True,
) -> TransportResult:
    """Entropic GW between structures ``C1`` ``(n, n)`` and ``C2`` ``(m, m)`` (or batches)
    with weights ``p``, ``q`` (uniform if ``None``).

    ``value`` and ``cost`` are the GW objective ``sum L(C1_ik, C2_jl) T_ij T_kl`` at the plan
    (square loss), as POT's ``gw_dist``.
    """
    return _solve(C1, C2, p, q, None, 1.0, epsilon, max_iter, tol, sinkhorn_max_iter, warn)


def entropic_fused_gromov_wasserstein(
    M: Any,
    C1: Any,
    C2: Any,
    p: Any = None,
    q: Any = None,
    *,
    alpha: float = 0.5,
    epsilon: float = 0.1,
    max_iter: int = 1000,
    tol: float | None = None,
    sinkhorn_max_iter: int = 1000,
    warn: bool = True,
) -> TransportResult:
    """Entropic fused GW: ``(1 - alpha) <T, M> + alpha GW(C1, C2, T)``, ``M`` ``(n, m)`` the
    cross-domain feature cost. ``alpha = 1`` is GW, ``alpha = 0`` entropic OT on ``M``."""
    return _solve(C1, C2, p, q, M, alpha, epsilon, max_iter, tol, sinkhorn_max_iter, warn)
