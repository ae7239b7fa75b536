"""egl.losses.l1_alignment / L1AlignmentLoss."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import egl
from egl.losses import L1AlignmentLoss, l1_alignment


def _data(b: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def test_matches_torch_l1() -> None:
    s, m = _data()
    torch.testing.assert_close(l1_alignment(s, m), F.l1_loss(s, m))


def test_hand_computed() -> None:
    s = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    m = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]]])
    assert float(l1_alignment(s, m)) == pytest.approx((1 + 0 + 1 + 0.25) / 4)


def test_zero_at_perfect_alignment() -> None:
    s, _ = _data()
    assert float(l1_alignment(s, s)) == 0.0


def test_reductions() -> None:
    s, m = _data(b=4)
    ref = (s - m).abs().flatten(1).mean(1)
    none = l1_alignment(s, m, reduction="none")
    assert none.shape == (4,)
    torch.testing.assert_close(none, ref)
    torch.testing.assert_close(l1_alignment(s, m, reduction="sum"), ref.sum())


def test_mask_resized_by_area_and_bilinear() -> None:
    s, _ = _data(b=2, h=4, w=4)
    big = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(l1_alignment(s, big), l1_alignment(s, F.adaptive_avg_pool2d(big, (4, 4))))
    s2, _ = _data(b=2, h=16, w=16)
    small = torch.rand(2, 1, 4, 4)
    up = F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(l1_alignment(s2, small), l1_alignment(s2, up))


def test_bool_3d_mask() -> None:
    s, _ = _data(b=2)
    mb = torch.rand(2, 8, 8) > 0.5
    torch.testing.assert_close(l1_alignment(s, mb), F.l1_loss(s, mb.float().unsqueeze(1)))


def test_module_equals_function_and_registered() -> None:
    s, m = _data()
    loss = egl.create("alignment", "l1", reduction="sum")
    assert isinstance(loss, L1AlignmentLoss)
    torch.testing.assert_close(loss(s, m), l1_alignment(s, m, reduction="sum"))


def test_gradient_reaches_saliency() -> None:
    s, m = _data()
    s.requires_grad_(True)
    l1_alignment(s, m).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_errors() -> None:
    with pytest.raises(egl.InputError, match=r"l1_alignment: 'saliency' expected a 4-D tensor"):
        l1_alignment(torch.rand(8, 8), torch.rand(1, 8, 8))
    with pytest.raises(egl.InputError, match=r"'mask' expected the same batch size as 'saliency' \(1\), got batch size 2"):
        l1_alignment(torch.rand(1, 1, 8, 8), torch.rand(2, 8, 8))
    with pytest.raises(egl.InputError, match=re.escape("got values in [-1, 0.5]")):
        l1_alignment(torch.rand(1, 1, 2, 2), torch.tensor([[[-1.0, 0.5]]]))
    with pytest.raises(egl.InputError, match=re.escape("'saliency' expected values in [0.0, 1.0], got values in [0, 3]")):
        l1_alignment(torch.tensor([[[[0.0, 3.0]]]]), torch.rand(1, 1, 1, 2))
    with pytest.raises(egl.InputError, match=r"'mask' expected a mask of shape"):
        l1_alignment(torch.rand(1, 1, 2, 2), torch.rand(1, 2, 2, 2))
    with pytest.raises(egl.InputError, match=r"'reduction' expected one of"):
        l1_alignment(torch.rand(1, 1, 2, 2), torch.rand(1, 2, 2), reduction="max")
    with pytest.raises(egl.InputError, match=r"L1AlignmentLoss: 'reduction'"):
        L1AlignmentLoss(reduction="max")
