"""egl.losses.bce_alignment / BCEAlignmentLoss: ALIGN's explanation loss."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import egl
from egl.losses import BCEAlignmentLoss, bce_alignment

EPS = 1e-6


def _squeeze(s: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    return eps + (1.0 - 2.0 * eps) * s


def _data(b: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def test_matches_torch_bce_on_squeezed_saliency() -> None:
    s, m = _data()
    torch.testing.assert_close(bce_alignment(s, m), F.binary_cross_entropy(_squeeze(s), m))


def test_hand_computed_single_pixel() -> None:
    s = torch.tensor([0.25]).view(1, 1, 1, 1)
    m = torch.tensor([1.0]).view(1, 1, 1, 1)
    expected = -torch.log(torch.tensor(EPS + (1 - 2 * EPS) * 0.25))
    torch.testing.assert_close(bce_alignment(s, m), expected)


def test_reduction_sum_and_none() -> None:
    s, m = _data(b=4)
    ref = F.binary_cross_entropy(_squeeze(s), m, reduction="none").flatten(1).mean(1)
    none = bce_alignment(s, m, reduction="none")
    assert none.shape == (4,)
    torch.testing.assert_close(none, ref)
    torch.testing.assert_close(bce_alignment(s, m, reduction="sum"), ref.sum())
    torch.testing.assert_close(bce_alignment(s, m, reduction="mean"), ref.mean())


def test_finite_at_saturated_saliency_with_live_gradient() -> None:
    s = torch.tensor([[[[0.0, 1.0]]]], requires_grad=True)
    m = torch.tensor([[[[1.0, 0.0]]]])
    loss = bce_alignment(s, m)
    assert torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and (s.grad != 0).all()


def test_near_zero_at_perfect_binary_alignment() -> None:
    m = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert float(bce_alignment(m, m)) < 1e-5


def test_eps_is_used() -> None:
    s, m = _data()
    torch.testing.assert_close(bce_alignment(s, m, eps=1e-3), F.binary_cross_entropy(_squeeze(s, 1e-3), m))


def test_mask_resized_by_area_to_saliency() -> None:
    s, _ = _data(b=2, h=4, w=4)
    m = (torch.rand(2, 1, 16, 16) > 0.5).float()
    small = F.adaptive_avg_pool2d(m, (4, 4))
    torch.testing.assert_close(bce_alignment(s, m), bce_alignment(s, small))


def test_bool_and_3d_masks_accepted() -> None:
    s, _ = _data(b=2)
    mb = torch.rand(2, 8, 8) > 0.5
    ref = bce_alignment(s, mb.float().unsqueeze(1))
    torch.testing.assert_close(bce_alignment(s, mb), ref)
    torch.testing.assert_close(bce_alignment(s, mb.unsqueeze(1)), ref)


def test_module_equals_function_and_is_registered() -> None:
    s, m = _data()
    loss = egl.create("alignment", "bce", reduction="none", eps=1e-4)
    assert isinstance(loss, BCEAlignmentLoss)
    torch.testing.assert_close(loss(s, m), bce_alignment(s, m, reduction="none", eps=1e-4))
    assert "reduction='none'" in repr(loss)


def test_gradient_reaches_saliency() -> None:
    s, m = _data()
    s.requires_grad_(True)
    bce_alignment(s, m).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


# -- errors ---------------------------------------------------------------------------------
def test_saliency_wrong_rank() -> None:
    with pytest.raises(egl.InputError, match=r"bce_alignment: 'saliency' expected a 4-D tensor of shape \[B, 1, H, W\]"):
        bce_alignment(torch.rand(2, 8, 8), torch.rand(2, 8, 8))


def test_saliency_multi_channel() -> None:
    with pytest.raises(egl.InputError, match=r"'saliency' expected shape \[B, 1, H, W\] with dimension 1 equal to 1"):
        bce_alignment(torch.rand(2, 3, 8, 8), torch.rand(2, 8, 8))


def test_mask_multi_channel() -> None:
    with pytest.raises(egl.InputError, match=r"'mask' expected a mask of shape \[B, H, W\] or \[B, 1, H, W\]"):
        bce_alignment(torch.rand(2, 1, 8, 8), torch.rand(2, 3, 8, 8))


def test_mismatched_batch() -> None:
    with pytest.raises(egl.InputError, match=r"'mask' expected the same batch size as 'saliency' \(2\), got batch size 3"):
        bce_alignment(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8))


def test_mask_out_of_range_shows_range() -> None:
    m = torch.rand(2, 1, 8, 8) * 255
    m[0, 0, 0, 0] = 255.0
    m[0, 0, 0, 1] = 0.0
    with pytest.raises(egl.InputError, match=re.escape("got values in [0, 255]")):
        bce_alignment(torch.rand(2, 1, 8, 8), m)


def test_saliency_out_of_range_shows_range() -> None:
    s = torch.rand(2, 1, 8, 8)
    s[0, 0, 0, 0] = -0.25
    s[1, 0, 0, 0] = 1.5
    with pytest.raises(egl.InputError, match=re.escape("'saliency' expected values in [0.0, 1.0], got values in [-0.25, 1.5]")):
        bce_alignment(s, torch.rand(2, 1, 8, 8))


def test_bad_reduction_function_and_module() -> None:
    s, m = _data()
    with pytest.raises(egl.InputError, match=r"'reduction' expected one of \['mean', 'sum', 'none'\], got 'avg'"):
        bce_alignment(s, m, reduction="avg")
    with pytest.raises(egl.InputError, match=r"BCEAlignmentLoss: 'reduction' expected one of"):
        BCEAlignmentLoss(reduction="avg")


def test_a_bfloat16_map_gets_a_finite_loss_and_gradient() -> None:
    """A model run natively in bfloat16 returns bfloat16 maps, exactly 0 and 1 somewhere: in
    bfloat16 the squeeze ``eps + (1 - 2 eps) s`` rounds back to 0 and 1, and log gives -inf."""
    import torch

    from egl.losses.bce import bce_alignment

    s = torch.tensor([0.0, 0.25, 1.0, 0.5]).view(1, 1, 2, 2).bfloat16().requires_grad_(True)
    m = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    loss = bce_alignment(s, m)
    loss.backward()
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss)) and bool(torch.isfinite(s.grad.float()).all())
    ref = bce_alignment(s.detach().float(), m)
    torch.testing.assert_close(loss.detach(), ref)


@pytest.mark.parametrize("eps", [0.0, 0.5, 0.7, -1e-6, float("nan"), True])
def test_eps_outside_0_and_half_is_named(eps: object) -> None:
    """eps=0: NaN on an exact map; 0.5: a constant loss; 0.7: the inverted map scored better."""
    s = torch.rand(2, 1, 4, 4)
    with pytest.raises(egl.InputError, match=r"egl.losses.bce_alignment: 'eps' expected a number in \(0, 0.5\)"):
        bce_alignment(s, s, eps=eps)  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"egl.losses.BCEAlignmentLoss: 'eps' expected"):
        BCEAlignmentLoss(eps=eps)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_soft_mask_is_not_rounded_to_the_maps_16_bit_dtype(dtype: torch.dtype) -> None:
    """The mask was uploaded in the saliency's dtype before the float32 promotion: 0.3 became
    0.30078 in bfloat16."""
    g = torch.Generator().manual_seed(0)
    s = torch.rand(2, 1, 4, 4, generator=g).to(dtype)
    m = torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(bce_alignment(s, m), bce_alignment(s.float(), m), rtol=0, atol=0)
