"""egl.maskers.GroundTruthMasker: the data's own masks at the input's resolution."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import egl
from egl.maskers import GroundTruthMasker


def test_same_resolution_passes_through() -> None:
    m = torch.rand(2, 1, 8, 8)
    out = GroundTruthMasker()(torch.randn(2, 3, 8, 8), m)
    torch.testing.assert_close(out, m)


def test_shrinks_by_area() -> None:
    m = (torch.rand(2, 16, 16) > 0.5)
    out = GroundTruthMasker()(torch.randn(2, 3, 4, 4), m)
    assert out.shape == (2, 1, 4, 4) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.avg_pool2d(m.float().unsqueeze(1), 4))


def test_enlarges_bilinearly() -> None:
    m = torch.rand(2, 1, 4, 4)
    out = GroundTruthMasker()(torch.randn(2, 3, 16, 12), m)
    assert out.shape == (2, 1, 16, 12)
    torch.testing.assert_close(out, F.interpolate(m, size=(16, 12), mode="bilinear", align_corners=False))


def test_follows_input_dtype() -> None:
    m = torch.rand(1, 1, 4, 4)
    out = GroundTruthMasker()(torch.randn(1, 3, 4, 4, dtype=torch.float64), m)
    assert out.dtype == torch.float64


def test_registered_needs_mask() -> None:
    m = egl.create("masker", "ground_truth")
    assert isinstance(m, GroundTruthMasker)
    assert GroundTruthMasker.needs_mask and not GroundTruthMasker.trainable


def test_errors() -> None:
    gt = GroundTruthMasker()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(egl.InputError, match=r"ground_truth: 'mask' expected the batch's ground-truth masks, got None"):
        gt(x)
    with pytest.raises(egl.InputError, match=r"'mask' expected the same batch size as 'x' \(2\), got batch size 3"):
        gt(x, torch.rand(3, 8, 8))
    with pytest.raises(egl.InputError, match=re.escape("'mask' expected values in [0.0, 1.0], got values in [0, 255]")):
        gt(x, torch.tensor([0, 255], dtype=torch.uint8).repeat(2, 8, 4))
    with pytest.raises(egl.InputError, match=r"'mask' expected a mask of shape \[B, H, W\] or \[B, 1, H, W\]"):
        gt(x, torch.rand(2, 3, 8, 8))
    with pytest.raises(egl.InputError, match=r"ground_truth: 'x' expected a 4-D tensor"):
        gt(torch.randn(3, 8, 8), torch.rand(3, 8, 8))
