"""egl.kernels.channel_affine: BatchNorm's per-channel multiply-add on channels-last maps."""

from __future__ import annotations

import os

import pytest
import torch

import egl
from egl.kernels import triton_available
from egl.kernels.channel_affine import channel_affine, channel_affine_reference, supported

needs_interpreter = pytest.mark.skipif(not triton_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                                       reason="the Triton kernel runs on CPU only under TRITON_INTERPRET=1")


def _inputs(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g) * 3).to(dtype).contiguous(memory_format=torch.channels_last)
    return x, torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (2, 32, 20, 21), (4, 33, 3, 5), (1, 1, 1, 1), (2, 600, 3, 3)])
def test_matches_the_float64_result_rounded_once(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    """Within a multiply-add's rounding of the exact result: two roundings of at most one unit in
    the last place of ``x``'s dtype, relative to ``|x·s| + |t|`` (a fused multiply-add rounds once;
    the interpreter also truncates float32 -> bf16 where a GPU rounds to nearest), in ``x``'s dtype
    and channels-last layout; channel counts that are no power of two (5, 33, 600: masked columns)
    and a map of one value."""
    x, s, t = _inputs(shape, dtype)
    assert supported(x)
    out = channel_affine(x, s, t)
    assert out.dtype == dtype and out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last)
    prod, shift = x.double() * s.double().view(1, -1, 1, 1), t.double().view(1, -1, 1, 1)
    exact = prod + shift
    bound = 2 * torch.finfo(dtype).eps * (prod.abs() + shift.abs())
    assert bool(((out.double() - exact).abs() <= bound).all())
    ref = channel_affine_reference(x, s, t)
    assert bool(((out.double() - ref.double()).abs() <= 2 * bound).all())


@needs_interpreter
def test_nan_and_infinity_pass_through_and_each_channel_takes_its_own_factors() -> None:
    x, _, _ = _inputs((2, 4, 3, 3), torch.float32)
    x[0, 1, 1, 1], x[1, 2, 0, 0] = float("nan"), float("inf")
    s, t = torch.tensor([1.0, 2.0, -1.0, 0.0]), torch.tensor([0.0, 1.0, 10.0, 5.0])
    out = channel_affine(x, s, t)
    assert torch.isnan(out[0, 1, 1, 1]) and out[1, 2, 0, 0] == float("-inf")
    assert torch.equal(out[:, 3], torch.full_like(out[:, 3], 5.0))
    finite = torch.isfinite(x)
    torch.testing.assert_close(out[finite], channel_affine_reference(x, s, t)[finite], rtol=1e-6, atol=1e-6)


def test_other_layouts_take_the_reference_and_bad_factors_are_named() -> None:
    x = torch.randn(2, 3, 4, 5)  # NCHW
    s, t = torch.randn(3), torch.randn(3)
    assert not supported(x)
    assert torch.equal(channel_affine(x, s, t), channel_affine_reference(x, s, t))
    x64 = x.double().contiguous(memory_format=torch.channels_last)  # float64: PyTorch's float64 arithmetic
    assert not supported(x64)
    assert torch.equal(channel_affine(x64, s, t), channel_affine_reference(x64, s, t))
    with pytest.raises(egl.InputError, match=r"'scale' expected a \[3\] tensor.*shape \[4\]"):
        channel_affine(x, torch.randn(4), t)
    with pytest.raises(egl.InputError, match=r"'shift' expected a \[3\] tensor.*got 1.0"):
        channel_affine(x, s, 1.0)  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match="'x'"):
        channel_affine(torch.randn(3, 4), s, t)
