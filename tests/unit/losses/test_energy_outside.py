"""energy_outside: share of |signed Grad-CAM| of all classes outside the mask."""

from __future__ import annotations

import pytest
import torch

import egl
from egl.losses import EnergyOutsideLoss, energy_outside


def test_value_by_hand() -> None:
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, 0] = torch.tensor([[1.0, -3.0], [0.0, 0.0]])  # class 0: energy 1 inside, 3 outside
    maps[0, 1] = torch.tensor([[0.0, 0.0], [-2.0, 2.0]])  # class 1: 2 inside, 2 outside
    mask = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert float(energy_outside(maps, mask)) == pytest.approx(5 / 8)


def test_zero_inside_one_outside_and_sign_blind() -> None:
    mask = torch.zeros(2, 1, 4, 4)
    mask[..., :2, :] = 1
    inside = torch.randn(2, 3, 4, 4) * mask
    assert float(energy_outside(inside, mask)) == 0.0
    assert float(energy_outside(inside, 1 - mask)) == pytest.approx(1.0)
    maps = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(energy_outside(maps, mask), energy_outside(-maps, mask))


def test_no_energy_gives_zero_not_nan_and_masks_are_resized() -> None:
    out = energy_outside(torch.zeros(2, 4, 3, 3), torch.ones(2, 1, 3, 3), reduction="none")
    assert torch.equal(out, torch.zeros(2))
    big = torch.zeros(1, 1, 8, 8)
    big[..., :4, :4] = 1  # area-shrinks to one foreground cell of a 2x2 map
    maps = torch.ones(1, 1, 2, 2)
    assert float(energy_outside(maps, big)) == pytest.approx(0.75)


def test_negative_evidence_outside_is_penalised_where_bce_sees_nothing() -> None:
    """A map whose positive evidence is inside the mask but whose negative evidence is outside:
    the ReLU'd map of the paper's BCE is perfect, energy_outside is not."""
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :, :2] = 1
    signed = torch.where(mask.bool(), torch.ones(1, 1, 4, 4), -torch.ones(1, 1, 4, 4))
    relu_map = torch.relu(signed)
    assert float(egl.create("alignment", "bce")(relu_map, mask)) < 1e-4
    assert float(EnergyOutsideLoss()(signed, mask)) == pytest.approx(0.5)


def test_errors() -> None:
    with pytest.raises(egl.InputError, match="'maps' expected a 4-D tensor"):
        energy_outside(torch.rand(2, 4, 4), torch.ones(2, 4, 4))
    with pytest.raises(egl.InputError, match="'mask' expected the same batch size as 'maps'"):
        energy_outside(torch.rand(2, 3, 4, 4), torch.ones(3, 4, 4))
    with pytest.raises(egl.InputError, match=r"'mask' expected values in \[0.0, 1.0\]"):
        energy_outside(torch.rand(2, 3, 4, 4), torch.full((2, 4, 4), 2.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_maps_are_scored_in_float32(dtype: torch.dtype) -> None:
    """float16 once overflowed (1000 classes x 49 positions summed past 65504: NaN) and gave an
    empty sample NaN gradients (its 1e-30 guard is 0 in float16)."""
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 1, 14, 14, generator=g) > 0.5
    big = (torch.randn(2, 1000, 7, 7, generator=g) * 100).to(dtype)
    assert torch.equal(energy_outside(big, mask, reduction="none"),
                       energy_outside(big.float(), mask, reduction="none"))
    maps = torch.zeros(2, 5, 7, 7, dtype=dtype)
    maps[1] = torch.randn(5, 7, 7, generator=g).to(dtype)
    maps.requires_grad_(True)
    loss = energy_outside(maps, mask)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(maps.grad).all()
    assert torch.equal(maps.grad[0], torch.zeros_like(maps.grad[0]))  # no energy: no gradient


def test_a_nan_map_gives_a_nan_loss_not_zero() -> None:
    """A NaN anywhere in a sample's maps makes its share NaN (the training step then names the
    non-finite term) instead of 0, which would read as a perfect score."""
    maps = torch.rand(2, 4, 8, 8)
    maps[0, 1, 2, 3] = float("nan")
    share = energy_outside(maps, torch.ones(2, 1, 8, 8), reduction="none")
    assert bool(share[0].isnan()) and float(share[1]) == 0.0


def test_the_mean_over_an_empty_batch_is_refused_not_nan() -> None:
    from egl.losses import bce_alignment
    from egl.regularizers import sparsity

    empty = torch.rand(0, 1, 8, 8)
    for loss in (lambda: energy_outside(torch.rand(0, 4, 8, 8), empty), lambda: bce_alignment(empty, empty),
                 lambda: sparsity(empty)):
        with pytest.raises(egl.InputError, match=r"'inputs' expected a batch of at least one sample for "
                                                 r"reduction='mean', got an empty batch"):
            loss()
    assert energy_outside(torch.rand(0, 4, 8, 8), empty, reduction="sum") == 0  # a sum over nothing is 0
    assert energy_outside(torch.rand(0, 4, 8, 8), empty, reduction="none").shape == (0,)
