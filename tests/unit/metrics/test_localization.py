"""egl.metrics.localization and friends: energy pointing game, pointing game, top-|mask| IoU."""

from __future__ import annotations

import math

import pytest
import torch

import egl
from egl.metrics import LocalizationResult, energy_pointing_game, localization, pointing_game, top_k_iou


def _masks(b: int = 3, h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    """Random rectangles, each non-empty: ``[B, 1, H, W]`` in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(b, 1, h, w)
    for i in range(b):
        r0, c0 = (int(v) for v in torch.randint(0, h // 2, (2,), generator=g))
        r1, c1 = r0 + 1 + int(torch.randint(0, h // 2, (1,), generator=g)), c0 + 2
        m[i, 0, r0:r1, c0:c1] = 1.0
    return m


def test_perfect_map_scores_one() -> None:
    m = _masks()
    r = localization(m * 0.9, m)
    assert isinstance(r, LocalizationResult)
    torch.testing.assert_close(r.energy, torch.ones(3))
    torch.testing.assert_close(r.pointing, torch.ones(3))
    torch.testing.assert_close(r.iou, torch.ones(3))
    assert r.valid.all()
    torch.testing.assert_close(r.area, m.flatten(1).mean(1))


def test_uniform_map_energy_equals_area() -> None:
    m = _masks(b=4, seed=1)
    energy, area = energy_pointing_game(torch.full((4, 1, 8, 8), 0.3), m, reduction="none")
    torch.testing.assert_close(energy, m.flatten(1).mean(1))
    torch.testing.assert_close(energy, area)


def test_zero_map_is_scored_as_uniform() -> None:
    m = _masks(seed=2)
    energy, area = energy_pointing_game(torch.zeros(3, 1, 8, 8), m, reduction="none")
    torch.testing.assert_close(energy, area)
    assert torch.isfinite(energy).all()


def test_inverted_map_scores_zero() -> None:
    m = _masks(seed=3)
    r = localization(1 - m, m)
    torch.testing.assert_close(r.energy, torch.zeros(3))
    torch.testing.assert_close(r.pointing, torch.zeros(3))
    torch.testing.assert_close(r.iou, torch.zeros(3))


def test_hand_computed_partial_overlap() -> None:
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, :2] = 1  # pixels 0, 1
    m[0, 0, 1, :2] = 1  # pixels 4, 5
    s = torch.zeros(1, 1, 4, 4)
    s[0, 0, 0, 1], s[0, 0, 0, 2], s[0, 0, 1, 1], s[0, 0, 3, 3] = 4.0, 3.0, 2.0, 1.0  # raw, unnormalised
    r = localization(s, m)
    assert float(r.energy) == pytest.approx(6 / 10)
    assert float(r.area) == pytest.approx(4 / 16)
    assert float(r.pointing) == 1.0  # the maximum (pixel 1) is inside
    # top-4 by saliency: 1, 2, 5, 15 -> overlap {1, 5} -> IoU 2 / (4 + 4 - 2)
    assert float(r.iou) == pytest.approx(2 / 6)


def test_ties_in_saliency_go_by_raster_order() -> None:
    m = torch.zeros(1, 1, 4, 4)
    m[0, 0, 0, :] = 1  # first row: the first four pixels in raster order
    tied = torch.ones(1, 1, 4, 4)
    tied[0, 0, 2, 2] = 0.5  # not constant: the ties among the ones go by raster order
    assert float(top_k_iou(tied, m)) == 1.0
    assert float(pointing_game(tied, m)) == 1.0
    assert float(pointing_game(tied, m.flip(-2))) == 0.0  # argmax is pixel 0, mask is the last row


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_a_constant_map_is_scored_as_uniform_wherever_the_object_is(value: float) -> None:
    """A dead (all-zero) Grad-CAM ranked by raster order scored pointing 1 and IoU 1 for an
    object in the first row, 0 for one in the last: now chance, wherever it is."""
    m = torch.zeros(2, 1, 4, 4)
    m[0, 0, 0, :] = 1
    m[1, 0, 3, :] = 1
    r = localization(torch.full((2, 1, 4, 4), value), m)
    a = 4 / 16
    torch.testing.assert_close(r.energy, torch.full((2,), a))
    torch.testing.assert_close(r.pointing, torch.full((2,), a))
    torch.testing.assert_close(r.iou, torch.full((2,), a / (2 - a)))


def test_mask_binarised_at_half() -> None:
    s = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    soft = torch.tensor([[[[0.5, 0.49], [0.0, 0.0]]]])
    r = localization(s, soft)
    assert float(r.area) == 0.25  # only the 0.5 pixel is foreground
    assert float(r.iou) == 1.0 and float(r.energy) == 1.0


def test_empty_mask_is_nan_and_left_out_of_means() -> None:
    m = _masks(b=3, seed=4)
    m[1] = 0.0
    s = m.clone()
    r = localization(s, m)
    assert r.valid.tolist() == [True, False, True]
    assert math.isnan(float(r.energy[1])) and math.isnan(float(r.pointing[1])) and math.isnan(float(r.iou[1]))
    assert float(r.area[1]) == 0.0
    assert r.means() == {"energy": 1.0, "area": pytest.approx(float(r.area[[0, 2]].mean())), "pointing": 1.0, "iou": 1.0}
    assert float(pointing_game(s, m)) == 1.0
    assert math.isnan(float(top_k_iou(s[1:2], m[1:2])))


def test_saliency_resized_to_mask_resolution() -> None:
    m = torch.zeros(2, 1, 16, 16)
    m[:, :, :8, :8] = 1
    low = torch.zeros(2, 1, 2, 2)
    low[:, :, 0, 0] = 1  # bilinear blurs it across the border: energy < 1, but the top pixels stay inside
    r = localization(low, m)
    assert (r.energy > 0.7).all() and (r.energy < 1).all()
    torch.testing.assert_close(r.pointing, torch.ones(2))
    high = m.repeat_interleave(2, -1).repeat_interleave(2, -2)  # 32x32 saliency, area-shrunk exactly
    torch.testing.assert_close(localization(high, m).iou, torch.ones(2))


def test_mask_forms_accepted() -> None:
    m = _masks(seed=5)
    s = torch.rand(3, 1, 8, 8)
    ref = localization(s, m)
    for form in (m[:, 0], m.bool(), m[:, 0].bool(), m.long()):
        r = localization(s, form)
        torch.testing.assert_close(r.iou, ref.iou)
        torch.testing.assert_close(r.energy, ref.energy)


def test_functions_agree_with_localization() -> None:
    m = _masks(b=4, seed=6)
    s = torch.rand(4, 1, 4, 4)
    r = localization(s, m)
    e, a = energy_pointing_game(s, m, reduction="none")
    torch.testing.assert_close(e, r.energy)
    torch.testing.assert_close(a, r.area)
    torch.testing.assert_close(pointing_game(s, m, reduction="none"), r.pointing)
    torch.testing.assert_close(top_k_iou(s, m, reduction="none"), r.iou)
    em, am = energy_pointing_game(s, m)
    assert em.shape == () and float(em) == pytest.approx(r.means()["energy"])
    assert float(am) == pytest.approx(r.means()["area"])
    assert float(top_k_iou(s, m)) == pytest.approx(r.means()["iou"])
    assert float(pointing_game(s, m)) == pytest.approx(r.means()["pointing"])


def test_scores_a_maskers_output() -> None:
    x = torch.randn(2, 3, 16, 16)
    truth = _masks(b=2, h=16, w=16, seed=7)
    predicted = egl.create("masker", "learned")(x).detach()
    r = localization(predicted, truth)
    for v in (r.energy, r.pointing, r.iou):
        assert ((v >= 0) & (v <= 1)).all()
    assert float(localization(truth, truth).iou.mean()) == 1.0


# -- errors ---------------------------------------------------------------------------------
def test_negative_saliency() -> None:
    s = torch.rand(2, 1, 4, 4) - 0.5
    with pytest.raises(egl.InputError, match=r"egl.metrics.localization: 'saliency' expected values in \[0.0, inf\]"):
        localization(s, torch.ones(2, 4, 4))


def test_mask_out_of_range() -> None:
    with pytest.raises(egl.InputError, match=r"egl.metrics.pointing_game: 'mask' expected values in \[0.0, 1.0\], got values in \[0, 255\]"):
        pointing_game(torch.rand(1, 1, 4, 4), torch.tensor([0.0, 255.0]).repeat(8).view(1, 4, 4))


def test_batch_mismatch() -> None:
    with pytest.raises(egl.InputError, match=r"egl.metrics.top_k_iou: 'mask' expected the same batch size as 'saliency' \(2\), got batch size 3"):
        top_k_iou(torch.rand(2, 1, 4, 4), torch.ones(3, 4, 4))


def test_saliency_shape() -> None:
    with pytest.raises(egl.InputError, match=r"'saliency' expected shape \[B, 1, h, w\] with dimension 1 equal to 1"):
        localization(torch.rand(2, 3, 4, 4), torch.ones(2, 4, 4))


def test_bad_reduction() -> None:
    with pytest.raises(egl.InputError, match=r"egl.metrics.energy_pointing_game: 'reduction' expected one of \['mean', 'none'\], got 'sum'"):
        energy_pointing_game(torch.rand(2, 1, 4, 4), torch.ones(2, 4, 4), reduction="sum")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_saliency_is_scored_in_float32(dtype: torch.dtype) -> None:
    """float16 counts above 2048 round and ``2|M| - inter`` overflowed past 65504: a 200 x 200
    mask's IoU read 0 instead of 0.9."""
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(1, 1, 200, 200, generator=g) * 3).to(dtype)
    m = torch.ones(1, 1, 200, 200)
    m[..., :10, :] = 0
    low, full = localization(s, m), localization(s.float(), m)
    for name in ("energy", "area", "pointing", "iou"):
        assert getattr(low, name).dtype == torch.float32
        torch.testing.assert_close(getattr(low, name), getattr(full, name), rtol=0, atol=0)
    assert float(low.iou) > 0.85
