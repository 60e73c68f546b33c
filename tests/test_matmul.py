"""oneDNN's float32 ``a @ b.T`` (the region-word products of SCAN) and the batched matrix-vector
products through numpy's BLAS (Sinkhorn's scaling iterations) against plain products."""

import pytest
import torch

from alignfuse._matmul import mm_nt, uses_onednn


@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (7, 5, 3), (300, 200, 129)])
def test_mm_nt_equals_matmul(m, n, k):
    g = torch.Generator().manual_seed(m)
    a, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    want = (a.double() @ b.double().T).float()
    with torch.no_grad():
        torch.testing.assert_close(mm_nt(a, b), want, rtol=1e-5, atol=1e-5)
        # views (a row slice, a transposed matrix, a strided column slice) give the same
        torch.testing.assert_close(mm_nt(a[1:], b), want[1:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mm_nt(a.T.contiguous().T, b), want, rtol=1e-5, atol=1e-5)
        wide = torch.randn(n, 2 * k, generator=g)
        want_wide = (a.double() @ wide[:, ::2].double().T).float()
        torch.testing.assert_close(mm_nt(a, wide[:, ::2]), want_wide, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mm_nt(a.double(), b.double()), a.double() @ b.double().T)


def test_mm_nt_uses_onednn_only_without_autograd():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    a, b = torch.randn(6, 4), torch.randn(3, 4)
    assert uses_onednn(a, b)  # nothing requires grad
    assert not uses_onednn(a.double(), b.double())  # oneDNN has no float64 product
    assert not uses_onednn(a.bfloat16(), b.bfloat16())
    torch.backends.mkldnn.enabled = False
    try:
        assert not uses_onednn(a, b)
    finally:
        torch.backends.mkldnn.enabled = True
    w = a.clone().requires_grad_(True)
    assert not uses_onednn(w, b)
    with torch.no_grad():
        assert uses_onednn(w, b)
    # the autograd route gives the true gradient (oneDNN's op has none)
    mm_nt(w, b).sum().backward()
    assert w.grad is not None
    torch.testing.assert_close(w.grad, b.sum(0).expand(6, 4))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (torch.randn(3, 4), torch.randn(2, 5)),
        (torch.randn(3, 4, 1), torch.randn(2, 4)),
        (torch.randn(4), torch.randn(2, 4)),
    ],
)
def test_mm_nt_names_mismatched_operands(a, b):
    with torch.no_grad(), pytest.raises(ValueError, match=r"a \(m, k\) and b \(n, k\)"):
        mm_nt(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_matrix_vector_products_equal_bmm(dtype):
    from alignfuse._matmul import bmv, bvm

    g = torch.Generator().manual_seed(0)
    mat = torch.randn(3, 7, 5, generator=g, dtype=dtype)
    x, y = torch.randn(3, 5, generator=g, dtype=dtype), torch.randn(3, 7, generator=g, dtype=dtype)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(bmv(mat, x), torch.bmm(mat, x[:, :, None])[:, :, 0], **tol)
    torch.testing.assert_close(bvm(y, mat), torch.bmm(y[:, None, :], mat)[:, 0], **tol)
    # strided views and the transposed matrix
    mt = mat.transpose(1, 2)
    torch.testing.assert_close(bmv(mt, y), torch.bmm(mt, y[:, :, None])[:, :, 0], **tol)
    assert bmv(mat, x).dtype == dtype
    # with autograd: torch's product, and gradients flow
    xr = x.clone().requires_grad_(True)
    bmv(mat, xr).sum().backward()
    torch.testing.assert_close(xr.grad, mat.sum(1), **tol)
