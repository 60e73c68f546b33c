"""Matrix products with the fastest CPU kernel at hand: ``a @ b.T`` in float32 through
oneDNN (:func:`mm_nt`), batched matrix-vector products through numpy's BLAS (:func:`bmv`,
:func:`bvm`, for Sinkhorn's scaling iterations).

torch's CPU build runs float32 ``matmul`` through MKL, whose AVX-512 kernels are reserved for
Intel processors; on the AMD EPYC of BENCHMARKS.md it ran at ~190 GFLOP/s (the AVX2 ceiling),
while torch's bundled oneDNN (``torch.ops.mkldnn._linear_pointwise``, the op torch's own
compiler emits for linear layers) picks its kernels by instruction set and ran the same
products at 350-500 GFLOP/s, in float32 throughout (no reduced-precision accumulation).

oneDNN's op has no autograd formula, so it is used only when no gradient is tracked; every
other case (autograd, float64, half precision, CUDA, oneDNN missing or disabled with
``torch.backends.mkldnn.flags(enabled=False)``) is a plain ``a @ b.T``.
"""

from __future__ import annotations

import numpy as np
import torch

_onednn_checked: bool | None = None  # None: not probed yet


def _onednn_available() -> bool:
    """Whether oneDNN's linear op exists and agrees with ``matmul`` (probed once)."""
    global _onednn_checked
    if _onednn_checked is None:
        _onednn_checked = False
        op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
        if op is not None and torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
            a = torch.linspace(-1, 1, 24).reshape(4, 6)
            b = torch.linspace(2, -3, 30).reshape(5, 6)
            try:
                out = op(a, b, None, "none", [], "")
                _onednn_checked = out.shape == (4, 5) and torch.allclose(out, a @ b.T, atol=1e-5)
            except (RuntimeError, TypeError):
                pass
    return _onednn_checked


def uses_onednn(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether :func:`mm_nt` of these operands goes through oneDNN."""
    return (
        a.device.type == "cpu"
        and a.dtype == torch.float32
        and b.dtype == torch.float32
        and b.device.type == "cpu"
        and a.ndim == 2
        and b.ndim == 2
        and a.numel() > 0
        and b.numel() > 0
        and not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad))
        and bool(torch.backends.mkldnn.enabled)
        and _onednn_available()
    )


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` for ``a (m, k)`` and ``b (n, k)``; oneDNN when :func:`uses_onednn`."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"mm_nt needs a (m, k) and b (n, k), got a {tuple(a.shape)} and b {tuple(b.shape)}"
        )
    if uses_onednn(a, b):
        a, b = a.contiguous(), b.contiguous()  # no copy when already row-major
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        return out
    return a @ b.T


def _use_numpy(*ts: torch.Tensor) -> bool:
    return all(
        t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and not t.requires_grad
        for t in ts
    )


def bmv(mat: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product ``mat (B, n, m) @ vec (B, m) -> (B, n)``.

    On the CPU without autograd through numpy's BLAS (OpenBLAS): MKL's ``gemv``, which
    torch's CPU build calls, ran 2-3x slower on the AMD EPYC of BENCHMARKS.md (0.5 against
    1.3-1.5 ms for 2,000 x 2,000 in float64); elsewhere ``torch.bmm``.
    """
    if _use_numpy(mat, vec):
        return torch.from_numpy(np.matmul(mat.numpy(), vec.numpy()[:, :, None])[:, :, 0])
    return torch.bmm(mat, vec[:, :, None])[:, :, 0]


def bvm(vec: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """Batched vector-matrix product ``vec (B, n) @ mat (B, n, m) -> (B, m)`` (as :func:`bmv`)."""
    if _use_numpy(mat, vec):
        return torch.from_numpy(np.matmul(vec.numpy()[:, None, :], mat.numpy())[:, 0])
    return torch.bmm(vec[:, None, :], mat)[:, 0]
