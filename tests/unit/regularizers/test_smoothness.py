"""egl.regularizers.smoothness / Smoothness: ALIGN's Eq. 15 (total variation / (C·H·W))."""

from __future__ import annotations

import kornia
import pytest
import torch

import egl
from egl.regularizers import Smoothness, smoothness


def test_hand_computed() -> None:
    # rows: |0-1| + |1-1| = 1 (vertical pairs: col0 0-1, col1 1-1 -> 1); columns: |0-1| + |1-1| = 1
    m = torch.tensor([[[[0.0, 1.0], [1.0, 1.0]]]])
    assert float(smoothness(m)) == pytest.approx((1 + 1) / 4)


def test_equals_kornia_total_variation_over_chw() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.rand(3, 2, 7, 9, generator=g)
    ref = kornia.losses.total_variation(m).sum(-1) / (2 * 7 * 9)
    torch.testing.assert_close(smoothness(m, reduction="none"), ref)
    torch.testing.assert_close(smoothness(m), ref.mean())
    torch.testing.assert_close(smoothness(m, reduction="sum"), ref.sum())


def test_constant_is_zero_and_checkerboard_is_maximal() -> None:
    assert float(smoothness(torch.full((2, 1, 5, 5), 0.3))) == 0.0
    cb = ((torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2).float().view(1, 1, 4, 4)
    assert float(smoothness(cb)) == pytest.approx(2 * 4 * 3 / 16)


def test_module_equals_function_and_registered() -> None:
    m = torch.rand(3, 1, 8, 8)
    reg = egl.create("regularizer", "smoothness", reduction="none")
    assert isinstance(reg, Smoothness) and reg.inputs == "mask"
    out = reg(m)
    assert out.shape == (3,)
    torch.testing.assert_close(out, smoothness(m, reduction="none"))


def test_gradient() -> None:
    m = torch.rand(2, 1, 4, 4, requires_grad=True)
    smoothness(m).backward()
    assert m.grad is not None and float(m.grad.abs().sum()) > 0


def test_three_d_masks_are_one_channel_masks() -> None:
    m = torch.rand(2, 8, 8)
    torch.testing.assert_close(smoothness(m, reduction="none"), smoothness(m[:, None], reduction="none"))
    assert smoothness(torch.rand(0, 1, 4, 4), reduction="none").shape == (0,)


def test_errors() -> None:
    with pytest.raises(egl.InputError, match=r"smoothness: 'mask' expected a 4-D tensor of shape \[B, C, H, W\]"):
        smoothness(torch.rand(8, 8))
    with pytest.raises(egl.InputError, match=r"smoothness: 'mask' expected a floating-point tensor"):
        smoothness(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(egl.InputError, match=r"'reduction' expected one of"):
        smoothness(torch.rand(1, 1, 2, 2), reduction="avg")
    with pytest.raises(egl.InputError, match=r"Smoothness: 'reduction' expected one of"):
        Smoothness(reduction="avg")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_masks_are_summed_in_float32(dtype: torch.dtype) -> None:
    """A noisy float16 mask of 400 x 400 sums past 65504: the sum once gave inf."""
    m = (torch.rand(2, 1, 400, 400, generator=torch.Generator().manual_seed(0)) > 0.5).to(dtype)
    m.requires_grad_(True)
    out = smoothness(m, reduction="none")
    assert out.dtype == torch.float32
    assert torch.equal(out, smoothness(m.detach().float(), reduction="none"))
    out.sum().backward()
    assert m.grad.dtype == dtype and torch.isfinite(m.grad).all()
