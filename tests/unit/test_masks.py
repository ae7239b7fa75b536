"""egl._masks: mask validation (as_mask) and the resizing rule (resize_mask)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import egl
from egl._masks import as_mask, resize_mask

FN = "egl.test"


def test_as_mask_float_4d_passes_through() -> None:
    m = torch.rand(2, 1, 5, 6)
    out = as_mask(m, FN)
    assert out.shape == (2, 1, 5, 6) and out.dtype == torch.float32
    torch.testing.assert_close(out, m)


def test_as_mask_3d_gets_a_channel() -> None:
    m = torch.rand(3, 4, 4)
    out = as_mask(m, FN)
    assert out.shape == (3, 1, 4, 4)
    torch.testing.assert_close(out[:, 0], m)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64])
def test_as_mask_bool_and_int_become_float(dtype: torch.dtype) -> None:
    m = torch.tensor([[[1, 0], [0, 1]]]).to(dtype)
    out = as_mask(m, FN)
    assert out.dtype == torch.float32 and out.shape == (1, 1, 2, 2)
    assert out.tolist() == [[[[1.0, 0.0], [0.0, 1.0]]]]


@pytest.mark.parametrize("shape", [(4, 4), (1, 1, 1, 4, 4), (4,)])
def test_as_mask_wrong_rank(shape: tuple[int, ...]) -> None:
    with pytest.raises(egl.InputError, match=r"egl\.test: 'mask' expected a mask of shape \[B, H, W\] or \[B, 1, H, W\]"):
        as_mask(torch.zeros(shape), FN)


def test_as_mask_multi_channel() -> None:
    with pytest.raises(egl.InputError, match=r"shape \[2, 3, 4, 4\].*Keep one channel"):
        as_mask(torch.zeros(2, 3, 4, 4), FN)


def test_as_mask_out_of_range_shows_observed_range() -> None:
    m = torch.tensor([[[-0.5, 0.0], [1.0, 2.0]]])
    with pytest.raises(egl.InputError, match=re.escape("'mask' expected values in [0.0, 1.0], got values in [-0.5, 2]")):
        as_mask(m, FN)


def test_as_mask_rejects_int_mask_of_0_255() -> None:
    with pytest.raises(egl.InputError, match=r"got values in \[0, 255\]"):
        as_mask(torch.tensor([[[0, 255]]], dtype=torch.uint8), FN)


def test_as_mask_rejects_nan() -> None:
    with pytest.raises(egl.InputError, match=r"values in \[nan, nan\]"):
        as_mask(torch.full((1, 2, 2), float("nan")), FN)


def test_as_mask_check_values_false_skips_range() -> None:
    out = as_mask(torch.full((1, 2, 2), 3.0), FN, check_values=False)
    assert float(out.max()) == 3.0


def test_as_mask_not_a_tensor() -> None:
    with pytest.raises(egl.InputError, match=r"'mask' expected a torch\.Tensor, got a list of length 1"):
        as_mask([[0, 1]], FN)


def test_resize_identity_returns_same_tensor() -> None:
    m = torch.rand(2, 1, 8, 8)
    assert resize_mask(m, (8, 8)) is m


def test_resize_area_block_pattern_gives_exact_fractions() -> None:
    # Each 2x2 block holds 1, 2, 3 and 4 foreground pixels.
    m = torch.tensor([[1, 0, 1, 1],
                      [0, 0, 0, 0],
                      [1, 1, 1, 1],
                      [1, 0, 1, 1]], dtype=torch.float32).view(1, 1, 4, 4)
    out = resize_mask(m, (2, 2))
    assert out.tolist() == [[[[0.25, 0.5], [0.75, 1.0]]]]


def test_resize_area_checkerboard_is_one_half() -> None:
    m = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2).float().view(1, 1, 8, 8)
    out = resize_mask(m, (4, 4))
    assert torch.equal(out, torch.full((1, 1, 4, 4), 0.5))
    out = resize_mask(m, (2, 2))
    assert torch.equal(out, torch.full((1, 1, 2, 2), 0.5))


def test_resize_shrinking_equals_area_interpolation() -> None:
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(3, 1, 32, 48, generator=g) > 0.5).float()
    out = resize_mask(m, (8, 12))
    torch.testing.assert_close(out, F.interpolate(m, size=(8, 12), mode="area"))
    # keeps the foreground fraction exactly for integer factors
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), m.mean(dim=(1, 2, 3)))


def test_resize_enlarging_is_bilinear() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.rand(2, 1, 4, 4, generator=g)
    out = resize_mask(m, (16, 16))
    torch.testing.assert_close(out, F.interpolate(m, size=(16, 16), mode="bilinear", align_corners=False))


def test_resize_mixed_directions_is_antialiased_bilinear_and_in_range() -> None:
    g = torch.Generator().manual_seed(0)
    m = (torch.rand(2, 1, 8, 4, generator=g) > 0.5).float()
    out = resize_mask(m, (4, 8))
    ref = F.interpolate(m, size=(4, 8), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    torch.testing.assert_close(out, ref)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    for dtype in (torch.bfloat16, torch.float16):  # no 16-bit antialias kernel: float32 inside
        half = resize_mask(m.to(dtype), (4, 8))
        assert half.dtype == dtype and torch.allclose(half.float(), ref, atol=1e-2)


@pytest.mark.parametrize("offset", [0, 3])
def test_thin_bands_keep_their_fraction_when_one_side_shrinks(offset: int) -> None:
    """2-px bands, 25% of the mask, height shrunk 8x, width grown 2x: plain bilinear sampled
    between or on the bands (0.0 or 1.0 by where they fell)."""
    m = torch.zeros(1, 1, 256, 64)
    m[..., offset::8, :] = 1
    m[..., offset + 1::8, :] = 1
    assert float(resize_mask(m, (32, 128)).mean()) == pytest.approx(0.25, abs=0.01)


def test_resize_is_differentiable() -> None:
    m = torch.rand(1, 1, 8, 8, requires_grad=True)
    resize_mask(m, (4, 4)).sum().backward()
    assert m.grad is not None
    torch.testing.assert_close(m.grad, torch.full_like(m, 0.25))


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64])
def test_resize_refuses_bool_and_integer_masks_by_name(dtype: torch.dtype) -> None:
    """A bool mask crashed inside adaptive_avg_pool2d ("not implemented for 'Bool'"); callers
    pass as_mask's float masks, so a direct call is told to convert."""
    m = torch.ones(1, 1, 8, 8, dtype=dtype)
    with pytest.raises(egl.InputError, match=r"resize_mask: 'mask' expected a floating-point mask in \[0, 1\], "
                                             rf"got a {re.escape(str(dtype))} tensor .*as_mask"):
        resize_mask(m, (4, 4))


@pytest.mark.parametrize("size", [4, (4,), (4, 4, 4), (0, 4), (4, -1), (4.0, 4), (True, 4), None, "44"])
def test_resize_refuses_a_size_that_is_not_a_pair_of_positive_ints(size: object) -> None:
    """An int size raised "'int' object is not subscriptable"; 0 or a float went on to torch."""
    with pytest.raises(egl.InputError, match=r"resize_mask: 'size' expected an output size \(H, W\): two ints >= 1, "
                                             rf"got {re.escape(repr(size))}\. Pass a pair"):
        resize_mask(torch.rand(1, 1, 8, 8), size)  # type: ignore[arg-type]


def test_resize_takes_torch_size_and_lists() -> None:
    m = torch.rand(2, 1, 8, 8)
    assert resize_mask(m, torch.Size([4, 2])).shape == (2, 1, 4, 2)
    assert resize_mask(m, [16, 4]).shape == (2, 1, 16, 4)  # type: ignore[arg-type]


def test_a_transposed_mask_is_refused_by_name_and_other_proportions_are_resized() -> None:
    from egl.losses import bce_alignment, energy_outside
    from egl.maskers import GroundTruthMasker
    from egl.metrics import localization

    from egl._masks import check_aspect

    s, m = torch.rand(2, 1, 48, 64), (torch.rand(2, 1, 48, 64) > 0.5).float()
    mt = m.transpose(-2, -1)  # [2, 1, 64, 48]
    for call, where in ((lambda: localization(s, mt), "egl.metrics.localization: 'saliency'"),
                        (lambda: bce_alignment(s, mt), "egl.losses.bce_alignment: 'mask'"),
                        (lambda: energy_outside(torch.rand(2, 5, 48, 64), mt), "egl.losses.energy_outside: 'mask'"),
                        (lambda: GroundTruthMasker()(torch.rand(2, 3, 48, 64), mt), "ground_truth: 'mask'")):
        with pytest.raises(egl.InputError, match=rf"{where} expected a map oriented as .*their transpose"):
            call()
    bce_alignment(torch.rand(2, 1, 12, 16), m)  # any scale of the same orientation
    bce_alignment(torch.rand(2, 1, 2, 2), m)  # a feature grid's rounding (48x64 at stride 32)
    localization(torch.rand(2, 1, 7, 7), (torch.rand(2, 1, 224, 200) > 0.5).float())
    bce_alignment(torch.rand(2, 1, 32, 32), (torch.rand(2, 1, 300, 500) > 0.5).float())  # squashed photo: resized
    check_aspect((8, 8), (8, 8), "f", "mask", "x")  # square, and equal sizes: nothing to refuse
    with pytest.raises(egl.InputError, match="f: 'mask' expected a map oriented as the images \\[30, 40\\]"):
        check_aspect((80, 60), (30, 40), "f", "mask", "the images")
