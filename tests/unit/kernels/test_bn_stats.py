"""egl.kernels.bn_stats: per-channel mean and variance of channels-last maps in one read."""

from __future__ import annotations

import os

import pytest
import torch

from egl.kernels import triton_available
from egl.kernels.bn_stats import bn_stats, bn_stats_reference, supported

needs_interpreter = pytest.mark.skipif(not triton_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                                       reason="the Triton kernel runs on CPU only under TRITON_INTERPRET=1")


def _ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    return mean, var


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 32, 20, 21), (4, 33, 3, 5), (1, 1, 1, 1)])
def test_matches_float64_statistics(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g) * 0.5 - 2).to(dtype).contiguous(memory_format=torch.channels_last)
    assert supported(x)
    mean, var = bn_stats(x)
    rm, rv = _ref(x)
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean.double(), rm, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var.double(), rv, rtol=1e-5, atol=1e-7)


@needs_interpreter
def test_a_large_offset_does_not_cancel_the_variance() -> None:
    """Summing x and x² naively in float32 loses a variance of 0.01 under a mean of 1000; the
    per-channel shift keeps it."""
    x = (torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.1 + 1000)
    x = x.contiguous(memory_format=torch.channels_last)
    mean, var = bn_stats(x)
    rm, rv = _ref(x)
    torch.testing.assert_close(var.double(), rv, rtol=1e-4, atol=0)
    naive = (x.float().pow(2).mean((0, 2, 3)) - x.float().mean((0, 2, 3)) ** 2).double()
    assert (naive - rv).abs().max() > 100 * (var.double() - rv).abs().max()


def test_other_layouts_take_the_reference_and_empty_maps_are_refused() -> None:
    from egl.errors import InputError

    x = torch.randn(2, 3, 4, 5)  # NCHW
    assert not supported(x)
    for a, b in zip(bn_stats(x), bn_stats_reference(x)):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="x"):
        bn_stats(torch.empty(0, 3, 4, 4))
