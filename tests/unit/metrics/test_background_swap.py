"""Background swap (Xiao et al.): a model reading the object keeps its answer on any background, a
model reading the background follows the donor; donors, validity, the donor's object removed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import egl
from egl.metrics import background_swap, remove_objects
from egl.metrics.background_swap import _backgrounds


class RegionModel(nn.Module):
    """Class 1 when the mean of a region (the centre 2:6 or the border) is positive."""

    def __init__(self, region: str) -> None:
        super().__init__()
        inside = torch.zeros(8, 8, dtype=torch.bool)
        inside[2:6, 2:6] = True
        self.register_buffer("where", inside if region == "object" else ~inside)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :, self.where].mean((1, 2))
        return torch.stack([-v, v], 1)


def _data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class c: the object (centre 4x4) at +1 or -1, the background at the same sign (a shortcut)."""
    y = torch.arange(n) % 2
    sign = (2 * y - 1).float().view(n, 1, 1, 1)
    x = sign * torch.ones(n, 3, 8, 8)
    mask = torch.zeros(n, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    return x, y, mask


def test_a_model_reading_the_object_ignores_the_background() -> None:
    x, y, mask = _data()
    r = background_swap(RegionModel("object").eval(), x, y, mask, generator=torch.Generator().manual_seed(0))
    assert r.means() == {"bg_fg": 1.0, "bg_same": 1.0, "bg_rand": 1.0, "bg_gap": 0.0, "bg_follow": 0.0}


def test_a_model_reading_the_background_follows_the_donor() -> None:
    x, y, mask = _data()
    r = background_swap(RegionModel("background").eval(), x, y, mask, generator=torch.Generator().manual_seed(0))
    m = r.means()
    assert (m["bg_same"], m["bg_rand"], m["bg_gap"], m["bg_follow"]) == (1.0, 0.0, 1.0, 1.0)
    # a blank (0) background: both logits 0, argmax 0: class 0's images right by the tie, class 1's wrong
    assert m["bg_fg"] == 0.5 and not r.only_fg[y == 1].any()


def test_donors_are_of_the_same_class_or_another_and_drawn_from_the_generator() -> None:
    x, y, mask = _data(10)
    model = RegionModel("object").eval()
    r = background_swap(model, x, y, mask, generator=torch.Generator().manual_seed(3))
    idx = torch.arange(10)
    assert bool((y[r.same_donor] == y).all()) and bool((r.same_donor != idx).all())
    assert bool((y[r.rand_donor] != y).all())
    again = background_swap(model, x, y, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r.same_donor, again.same_donor) and torch.equal(r.rand_donor, again.rand_donor)
    # one class only: no donor of another class; a lone image of its class: none of its own
    one = background_swap(model, x[y == 0], y[y == 0], mask[y == 0])
    assert not one.valid_rand.any() and bool((one.rand_donor == -1).all())
    assert torch.isnan(torch.tensor(one.means()["bg_rand"]))
    lone = background_swap(model, x[:3], y[:3], mask[:3])  # classes 0, 1, 0: image 1 is alone
    assert lone.same_donor[1] == -1 and not lone.valid_same[1] and lone.valid_same[[0, 2]].all()


def test_images_without_object_or_background_have_no_score_and_lend_nothing() -> None:
    x, y, mask = _data(6)
    mask[0] = 0.0  # no object: nothing to move
    mask[1] = 1.0  # all object: no background shows, none to lend
    r = background_swap(RegionModel("object").eval(), x, y, mask, generator=torch.Generator().manual_seed(0))
    assert not r.valid_fg[:2].any() and r.valid_fg[2:].all()
    for lender in (0, 1):  # an empty mask (an unannotated image's placeholder) would lend its object too
        assert not (r.same_donor == lender).any() and not (r.rand_donor == lender).any()
    soft = torch.full_like(mask, 0.3)  # a soft mask with no pixel at the threshold: no object
    assert not background_swap(RegionModel("object").eval(), x, y, soft).valid_fg.any()


def test_foreground_is_decided_in_float32_for_half_precision_models() -> None:
    x, y, _ = _data(4)
    mask = torch.ones(4, 1, 8, 8)
    mask[..., 0, :3] = 0.0  # 3 background pixels of 64: the area 0.953 (bf16 rounds 0.998 and more to 1)
    mask[..., 4, 4] = 0.499  # below the threshold in float32, 0.5 in bfloat16
    model = RegionModel("object").eval()
    r32 = background_swap(model, x, y, mask, generator=torch.Generator().manual_seed(0))
    r16 = background_swap(model, x.bfloat16(), y, mask, generator=torch.Generator().manual_seed(0))
    assert r32.valid_fg.all() and torch.equal(r32.valid_fg, r16.valid_fg)
    assert torch.equal(r32.rand_donor, r16.rand_donor)


def test_the_donors_object_is_filled_from_its_background() -> None:
    x = torch.ones(1, 3, 8, 8)
    x[..., 3:5, 3:5] = 5.0  # the donor's object
    keep_mask = torch.zeros(1, 1, 8, 8)
    keep_mask[..., 3:5, 3:5] = 1.0
    imputed = _backgrounds(x, keep_mask >= 0.5, "impute", 0.0)
    torch.testing.assert_close(imputed, torch.ones(1, 3, 8, 8))  # a constant background fills to itself
    blank = _backgrounds(x, keep_mask >= 0.5, "baseline", -1.0)
    assert bool((blank[..., 3:5, 3:5] == -1).all()) and bool((blank[..., 0, :] == 1).all())


def test_masks_of_another_size_are_resized_and_soft_masks_blend() -> None:
    x, y, mask = _data()
    small = mask[..., ::2, ::2]  # 4x4
    r = background_swap(RegionModel("object").eval(), x, y, small, generator=torch.Generator().manual_seed(0))
    assert r.means()["bg_fg"] == 1.0


@pytest.mark.parametrize("kwargs, arg, message", [
    ({"fill": "tile"}, "fill", "one of ['impute', 'baseline']"),
    ({"threshold": 1.5}, "threshold", "a foreground level in (0, 1]"),
    ({"threshold": 0.0}, "threshold", ""),
    ({"baseline": float("nan")}, "baseline", "a finite number"),
    ({"baseline": float("inf")}, "baseline", "a finite number"),
    ({"generator": "seed"}, "generator", "a CPU torch.Generator"),
])
def test_bad_arguments_are_named(kwargs: dict, arg: str, message: str) -> None:
    x, y, mask = _data(4)
    with pytest.raises(egl.InputError, match=f"egl.metrics.background_swap: '{arg}'") as info:
        background_swap(RegionModel("object").eval(), x, y, mask, **kwargs)
    assert message in str(info.value)


def test_bad_inputs_are_named() -> None:
    x, y, mask = _data(4)
    model = RegionModel("object")
    with pytest.raises(egl.InputError, match="'model' expected a model in eval mode"):
        background_swap(model.train(), x, y, mask)
    model.eval()
    with pytest.raises(egl.InputError, match="'y' expected class indices in \\[0, 1\\].*the model has 2 outputs"):
        background_swap(model, x, y + 2, mask)
    with pytest.raises(egl.InputError, match="'mask' expected values in \\[0.0, 1.0\\]"):
        background_swap(model, x, y, mask * 2)
    with pytest.raises(egl.InputError, match="'mask'"):
        background_swap(model, x, y, mask[:3])


def test_backgrounds_made_once_give_the_same_scores_and_remove_objects_checks_its_inputs() -> None:
    torch.manual_seed(0)
    x, y, mask = torch.randn(6, 3, 8, 8), torch.arange(6) % 2, torch.zeros(6, 1, 8, 8)
    mask[..., 2:6, 1:5] = 1
    model = RegionModel("background").eval()
    backgrounds = remove_objects(x, mask)
    outside = (mask < 0.5).expand_as(x)
    assert torch.equal(backgrounds[outside], x[outside]) and not torch.equal(backgrounds, x)
    fresh = background_swap(model, x, y, mask, generator=torch.Generator().manual_seed(1))
    reused = background_swap(model, x, y, mask, generator=torch.Generator().manual_seed(1), backgrounds=backgrounds)
    assert all(torch.equal(getattr(fresh, k), getattr(reused, k)) for k in fresh.__dict__)
    blank = remove_objects(x, mask, fill="baseline", baseline=-3.0)
    assert bool((blank[~outside] == -3).all())
    with pytest.raises(egl.InputError, match="'backgrounds' expected a tensor of the images' shape"):
        background_swap(model, x, y, mask, backgrounds=backgrounds[:3])
    with pytest.raises(egl.InputError, match="'backgrounds' expected finite"):
        background_swap(model, x, y, mask, backgrounds=torch.full_like(x, float("nan")))
    with pytest.raises(egl.InputError, match="remove_objects: 'x' expected a non-empty floating B C H W batch"):
        remove_objects(x[0], mask)
    with pytest.raises(egl.InputError, match="remove_objects: 'fill' expected one of"):
        remove_objects(x, mask, fill="tile")
    with pytest.raises(egl.InputError, match="remove_objects: 'mask'"):
        remove_objects(x, mask[:2])
