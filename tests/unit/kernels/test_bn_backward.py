"""egl.kernels.bn_backward: BatchNorm's training-mode backward on channels-last maps."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import egl
from egl.kernels import triton_available
from egl.kernels.bn_backward import bn_backward, bn_backward_reference, supported

needs_interpreter = pytest.mark.skipif(not triton_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                                       reason="the Triton kernels run on CPU only under TRITON_INTERPRET=1")


def _case(shape: tuple[int, ...], dtype: torch.dtype, offset: float) -> tuple:
    gen = torch.Generator().manual_seed(sum(shape) + int(offset))
    cl = torch.channels_last
    x = (torch.randn(*shape, generator=gen) * 0.7 + offset).to(dtype).contiguous(memory_format=cl)
    g = torch.randn(*shape, generator=gen).to(dtype).contiguous(memory_format=cl)
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    gamma = torch.rand(shape[1], generator=gen) + 0.5
    return g, x, gamma, mean.float(), torch.rsqrt(var + 1e-5).float()


def _exact(g: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor) -> tuple:
    """float64 autograd through F.batch_norm (batch statistics of the same x)."""
    xd, gd = x.double().requires_grad_(True), gamma.double().requires_grad_(True)
    bd = torch.zeros_like(gd, requires_grad=True)
    y = F.batch_norm(xd, None, None, gd, bd, True, 0.0, 1e-5)
    return torch.autograd.grad(y, [xd, gd, bd], g.double())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("offset", [0.0, 1000.0])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 32, 10, 11), (4, 33, 3, 5), (4, 3, 40, 40)])
def test_matches_float64_autograd(shape: tuple[int, ...], dtype: torch.dtype, offset: float) -> None:
    """``dx`` within float32 rounding of the float64 gradient (16-bit: one rounding of the result,
    checked per element; the interpreter truncates to bf16 where a GPU rounds to nearest, hence
    5e-3 over the map), also under a mean of 1000 (``x - μ`` is formed in the kernels); ``dγ``,
    ``dβ`` in float32; layouts and dtypes kept. (4, 3, 40, 40): each program of the sums sums
    several tiles of rows; 5 and 33 channels: masked columns.)"""
    g, x, gamma, mean, invstd = _case(shape, dtype, offset)
    assert supported(g, x)
    dx, dgamma, dbeta = bn_backward(g, x, gamma, mean, invstd)
    ex, egamma, ebeta = _exact(g, x, gamma)
    assert dx.dtype == dtype and dx.is_contiguous(memory_format=torch.channels_last)
    assert dgamma.dtype == dbeta.dtype == torch.float32
    assert _rel(dx, ex) < (1e-5 if dtype == torch.float32 else 5e-3)
    if dtype != torch.float32:  # every element within one unit in the last place (and float32 noise)
        ulp = 2.0 * torch.finfo(dtype).eps * ex.abs() + 1e-5 * ex.abs().max()
        assert bool(((dx.double() - ex).abs() <= ulp).all())
    # dγ sums g·(x - μ) with the float32 μ given (as PyTorch's kernel does): under a mean of 1000
    # its rounding (6e-5) shifts every x - μ alike, 2-4e-5 of dγ against the float64 statistics
    assert _rel(dgamma, egamma) < (1e-5 if offset == 0 else 1e-4) and _rel(dbeta, ebeta) < 1e-5
    ref = bn_backward_reference(g, x, gamma, mean, invstd)
    assert _rel(dx, ref[0]) < (1e-5 if dtype == torch.float32 else 5e-3)
    assert _rel(dgamma, ref[1]) < 1e-5 and _rel(dbeta, ref[2]) < 1e-5


@needs_interpreter
def test_the_mask_leaves_out_what_is_not_needed_and_no_gamma_means_one() -> None:
    g, x, gamma, mean, invstd = _case((2, 4, 5, 5), torch.float32, 0.0)
    full = bn_backward(g, x, gamma, mean, invstd)
    dx, dgamma, dbeta = bn_backward(g, x, gamma, mean, invstd, (True, False, False))
    assert dgamma is None and dbeta is None and torch.equal(dx, full[0])
    dx, dgamma, dbeta = bn_backward(g, x, gamma, mean, invstd, (False, True, True))
    assert dx is None and torch.equal(dgamma, full[1]) and torch.equal(dbeta, full[2])
    assert bn_backward(g, x, gamma, mean, invstd, (False, False, False)) == (None, None, None)
    got, want = bn_backward(g, x, None, mean, invstd), bn_backward_reference(g, x, None, mean, invstd)
    for a, b in zip(got, want):  # (an affine-free BatchNorm: γ = 1, float32 dγ and dβ as PyTorch's)
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_other_layouts_take_pytorchs_kernel_and_empty_maps_are_refused() -> None:
    g, x, gamma, mean, invstd = _case((2, 3, 4, 5), torch.float32, 0.0)
    g, x = g.contiguous(), x.contiguous()  # NCHW
    assert not supported(g, x)
    for a, b in zip(bn_backward(g, x, gamma, mean, invstd), bn_backward_reference(g, x, gamma, mean, invstd)):
        assert torch.equal(a, b)
    assert not supported(g.contiguous(memory_format=torch.channels_last), x)  # the two layouts differ
    cl = torch.channels_last
    assert not supported(g.double().contiguous(memory_format=cl), x.double().contiguous(memory_format=cl))
    with pytest.raises(egl.InputError, match="'x'"):
        bn_backward(g[:0], x[:0], gamma, mean, invstd)
    g16 = g.contiguous(memory_format=cl).half()  # another dtype than x's: PyTorch's kernel (and its error)
    assert not supported(g16, x.contiguous(memory_format=cl))
    with pytest.raises(egl.InputError, match=r"'mean' expected a \[3\] tensor .*shape \[2\]"):
        bn_backward(g, x, gamma, mean[:2], invstd)
    with pytest.raises(egl.InputError, match=r"'invstd' expected a \[3\] tensor .*on meta"):
        bn_backward(g, x, gamma, mean, invstd.to("meta"))
