"""Chunked InfoNCE and sigmoid equal the plain losses in value and gradient."""

import math

import pytest
import torch

from alignfuse.losses import info_nce, sigmoid_loss
from alignfuse.losses.chunked import chunked_info_nce, chunked_sigmoid


def _leaves(n=11, d=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_(True)
    b = torch.randn(n, d, generator=g, dtype=dtype).requires_grad_(True)
    t = torch.tensor(math.log(8.0), dtype=dtype, requires_grad=True)
    bias = torch.tensor(-2.0, dtype=dtype, requires_grad=True)
    return a, b, t, bias


def _grads(loss, *xs):
    return torch.autograd.grad(loss, xs)


@pytest.mark.parametrize("chunk", [1, 3, 4, 11, 64])
@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_chunked_info_nce_equals_plain(chunk, similarity):
    a, b, t, _ = _leaves()
    plain = info_nce(a, b, t, similarity=similarity)
    chunked = info_nce(a, b, t, similarity=similarity, chunk_size=chunk)
    assert torch.allclose(plain, chunked, rtol=1e-12)
    for gp, gc in zip(_grads(plain, a, b, t), _grads(chunked, a, b, t), strict=True):
        assert torch.allclose(gp, gc, rtol=1e-10, atol=1e-12)
    summed = info_nce(a, b, t, similarity=similarity, reduction="sum", chunk_size=chunk)
    assert torch.allclose(summed, plain * 11)


@pytest.mark.parametrize("chunk", [1, 3, 4, 11, 64])
def test_chunked_sigmoid_equals_plain(chunk):
    a, b, t, bias = _leaves(seed=1)
    plain = sigmoid_loss(a, b, t, bias)
    chunked = sigmoid_loss(a, b, t, bias, chunk_size=chunk)
    assert torch.allclose(plain, chunked, rtol=1e-12)
    for gp, gc in zip(_grads(plain, a, b, t, bias), _grads(chunked, a, b, t, bias), strict=True):
        assert torch.allclose(gp, gc, rtol=1e-10, atol=1e-12)


def test_gradcheck_custom_autograd():
    a, b, t, bias = _leaves(n=5, d=3, seed=2)
    assert torch.autograd.gradcheck(
        lambda x, y, s: chunked_info_nce(x, y, s, chunk_size=2), (a, b, t)
    )
    assert torch.autograd.gradcheck(
        lambda x, y, s, c: chunked_sigmoid(x, y, s, c, chunk_size=2), (a, b, t, bias)
    )


def test_float32_and_large_logits_stay_finite():
    a, b, _, _ = _leaves(n=300, d=16, dtype=torch.float32, seed=3)
    scale = math.log(100.0)
    plain, chunked = info_nce(a, b, scale), info_nce(a, b, scale, chunk_size=64)
    assert torch.isfinite(chunked) and torch.allclose(plain, chunked, rtol=1e-5)


def test_chunked_modules_and_bad_arguments():
    import alignfuse

    a, b, _, _ = _leaves(seed=4)
    m1 = alignfuse.create_loss("info_nce", chunk_size=4)
    m2 = alignfuse.create_loss("info_nce")
    assert torch.allclose(m1(a, b).loss, m2(a, b).loss)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        info_nce(a, b, chunk_size=0)
    with pytest.raises(ValueError, match="one positive per row"):
        info_nce(a, b, labels=torch.arange(11), chunk_size=4)
    with pytest.raises(ValueError, match="not 'none'"):
        sigmoid_loss(a, b, chunk_size=4, reduction="none")
    with pytest.raises(ValueError, match="zero-norm"):
        info_nce(torch.zeros(3, 2), torch.ones(3, 2), chunk_size=2)
