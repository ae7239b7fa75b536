"""egl.maskers.GrayscaleMasker: BT.601 luminance as a mask (ALIGN's m-Gray)."""

from __future__ import annotations

import pytest
import torch

import egl
from egl.maskers import GrayscaleMasker


def _luma(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _minmax(y: torch.Tensor) -> torch.Tensor:
    lo = y.amin(dim=(1, 2, 3), keepdim=True)
    hi = y.amax(dim=(1, 2, 3), keepdim=True)
    return (y - lo) / (hi - lo)


def test_minmax_bt601_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 9, 7, generator=g) * torch.tensor([1.0, 3.0, 0.2]).view(3, 1, 1, 1)
    out = GrayscaleMasker()(x)
    assert out.shape == (3, 1, 9, 7) and out.dtype == torch.float32
    torch.testing.assert_close(out, _minmax(_luma(x)))
    for i in range(3):  # each image spans exactly [0, 1]
        assert float(out[i].min()) == 0.0 and float(out[i].max()) == 1.0


def test_pure_colours_have_bt601_luminance() -> None:
    x = torch.eye(3).view(3, 3, 1, 1).expand(3, 3, 2, 2).contiguous()
    out = GrayscaleMasker(rescale="clamp")(x)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([0.299, 0.587, 0.114]))


def test_clamp_keeps_absolute_luminance() -> None:
    x = torch.rand(2, 3, 5, 5) * 1.6 - 0.3
    out = GrayscaleMasker(rescale="clamp")(x)
    torch.testing.assert_close(out, _luma(x).clamp(0, 1))


def test_single_channel_used_as_is() -> None:
    x = torch.rand(2, 1, 4, 4)
    torch.testing.assert_close(GrayscaleMasker()(x), _minmax(x))
    torch.testing.assert_close(GrayscaleMasker(rescale="clamp")(x), x)


def test_constant_image_gives_zeros() -> None:
    out = GrayscaleMasker()(torch.full((1, 3, 4, 4), 0.7))
    assert torch.equal(out, torch.zeros(1, 1, 4, 4))


def test_registered_not_trainable() -> None:
    m = egl.create("masker", "grayscale")
    assert isinstance(m, GrayscaleMasker)
    assert not m.trainable and not m.needs_mask and not list(m.parameters())


def test_errors() -> None:
    with pytest.raises(egl.InputError, match=r"GrayscaleMasker: 'rescale' expected one of \['minmax', 'clamp'\], got 'none'"):
        GrayscaleMasker(rescale="none")
    msg = r"grayscale: 'x' expected an RGB \(3-channel\) or grayscale \(1-channel\) image, got 4 channels"
    with pytest.raises(egl.InputError, match=msg):
        GrayscaleMasker()(torch.rand(1, 4, 4, 4))
    with pytest.raises(egl.InputError, match=r"grayscale: 'x' expected a 4-D tensor"):
        GrayscaleMasker()(torch.rand(3, 4, 4))
