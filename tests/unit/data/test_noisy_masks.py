"""NoisyMasks: boxes, dilation, erosion and offsets of each item's mask, fixed per item."""

from __future__ import annotations

import pytest
import torch

import egl
from egl.data import Augment, Augmented, NoisyMasks, PartialMasks, degrade_mask
from egl.experiments.sources import TensorDictDataset, load_source


def _blob() -> torch.Tensor:
    m = torch.zeros(1, 10, 10)
    m[0, 3:6, 2:4] = 1  # a 3 x 2 block
    m[0, 7, 7] = 1  # and a pixel apart
    return m


def _data(n: int = 6) -> TensorDictDataset:
    return TensorDictDataset({"image": torch.rand(n, 3, 10, 10), "label": torch.arange(n) % 2,
                              "mask": _blob().expand(n, 1, 10, 10).clone()})


def test_box_is_the_bounding_box_of_all_the_foreground() -> None:
    out = degrade_mask(_blob(), box=True)
    want = torch.zeros(1, 10, 10)
    want[0, 3:8, 2:8] = 1
    assert torch.equal(out, want)
    assert torch.equal(degrade_mask(torch.zeros(1, 10, 10), box=True), torch.zeros(1, 10, 10))
    soft = _blob() * 0.4  # below 0.5: no foreground
    assert torch.equal(degrade_mask(soft, box=True), torch.zeros(1, 10, 10))


def test_dilate_and_erode_are_square_max_and_min_with_a_background_border() -> None:
    m = _blob()
    grown = degrade_mask(m, dilate=1)
    want = torch.zeros(1, 10, 10)
    want[0, 2:7, 1:5] = 1
    want[0, 6:9, 6:9] = 1
    assert torch.equal(grown, want)
    assert torch.equal(degrade_mask(m, erode=1), torch.zeros(1, 10, 10))  # no 3x3 square fits in either part
    block = torch.zeros(1, 10, 10)
    block[0, 2:7, 3:8] = 1
    want = torch.zeros(1, 10, 10)
    want[0, 3:6, 4:7] = 1
    assert torch.equal(degrade_mask(block, erode=1), want)
    full = torch.ones(1, 5, 5)
    assert float(degrade_mask(full, erode=1).sum()) == 9.0  # the border counts as background
    soft = torch.zeros(1, 5, 5)
    soft[0, 2, 2] = 0.7
    assert float(degrade_mask(soft, dilate=1).max()) == pytest.approx(0.7)  # soft stays soft
    assert torch.equal(degrade_mask(m, dilate=1, erode=1), degrade_mask(degrade_mask(m, dilate=1), erode=1))


def test_offset_moves_the_mask_and_clears_the_strip() -> None:
    m = _blob()
    moved = degrade_mask(m, offset=(2, -1))
    assert torch.equal(moved[0, 5:8, 1:3], torch.ones(3, 2)) and float(moved[0, 9, 6]) == 1.0
    assert float(moved.sum()) == float(m.sum())
    assert torch.equal(degrade_mask(m, offset=(10, 0)), torch.zeros(1, 10, 10))
    edge = degrade_mask(m, offset=(-4, 0))  # part of the block leaves the image
    assert float(edge.sum()) == 5.0  # two of the block's rows and the pixel stay


def test_items_get_one_fixed_offset_each_and_keep_their_other_keys() -> None:
    data = _data()
    noisy = NoisyMasks(data, shift=2, seed=1)
    offsets = [noisy.offset(i) for i in range(6)]
    assert all(abs(dy) <= 2 and abs(dx) <= 2 for dy, dx in offsets) and len(set(offsets)) > 1
    assert offsets == [NoisyMasks(data, shift=2, seed=1).offset(i) for i in range(6)]  # seeded, per item
    assert offsets != [NoisyMasks(data, shift=2, seed=2).offset(i) for i in range(6)]
    for i in range(6):
        item = noisy[i]
        assert torch.equal(item["mask"], degrade_mask(data[i]["mask"], offset=offsets[i]))
        assert torch.equal(item["image"], data[i]["image"]) and torch.equal(noisy[i]["mask"], item["mask"])
    assert torch.equal(noisy[-1]["mask"], noisy[5]["mask"]) and len(noisy) == 6
    assert NoisyMasks(data).offset(3) == (0, 0) and "shift=2" in repr(noisy)


def test_mask_dtypes_are_kept_and_unannotated_items_pass_through() -> None:
    for mask in (_blob().bool(), _blob().to(torch.uint8), _blob().half()):
        out = NoisyMasks([{"image": torch.rand(3, 10, 10), "mask": mask}], dilate=1)[0]["mask"]
        assert out.dtype == mask.dtype and float(out.float().sum()) == 29.0  # 5 x 4 + 3 x 3
    part = PartialMasks(_data(), 0.5, seed=0)
    noisy = NoisyMasks(part, box=True)
    for i in range(6):
        want = degrade_mask(_blob(), box=True) if i in part.annotated else torch.zeros(1, 10, 10)
        assert torch.equal(noisy[i]["mask"], want)
    plain = {"image": torch.rand(3, 10, 10), "label": 0}
    assert NoisyMasks([plain], box=True)[0] is plain


def test_augmentation_after_it_moves_the_degraded_mask() -> None:
    data = _data(2)
    aug = Augmented(NoisyMasks(data, box=True), Augment(flip=1.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0)))
    assert torch.equal(aug[0]["mask"], degrade_mask(_blob(), box=True).flip(-1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dilate": -1}, "'dilate' expected a whole number of pixels >= 0"),
        ({"erode": 1.5}, "'erode' expected a whole number of pixels >= 0"),
        ({"shift": True}, "'shift' expected a whole number of pixels >= 0"),
        ({"box": "yes"}, "'box' expected True or False"),
        ({"seed": -3}, "'seed' expected an int in \\[0, 2\\*\\*63\\)"),
    ],
)
def test_bad_settings_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(egl.InputError, match=match):
        NoisyMasks(_data(), **kwargs)


def test_bad_data_and_masks_are_named() -> None:
    with pytest.raises(egl.InputError, match="'dataset' expected a map-style data set"):
        NoisyMasks(iter([]))
    with pytest.raises(egl.InputError, match="'dataset' expected items whose 'mask' is a tensor"):
        NoisyMasks([{"image": torch.rand(3, 4, 4), "mask": [[1]]}], box=True)[0]
    with pytest.raises(egl.InputError, match="'mask' expected a floating tensor"):
        degrade_mask(torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(egl.InputError, match="'offset' expected a pair of whole pixel offsets"):
        degrade_mask(torch.ones(4, 4), offset=(1.5, 0))


def test_experiments_degrade_the_training_masks_only() -> None:
    from egl.experiments.config import DEFAULTS, apply_overrides, check_values

    synth = {"train_per_domain": 8, "val_per_domain": 4, "test_per_split": 4}
    plain = load_source({**DEFAULTS["data"], "synthetic": synth})
    noisy = load_source({**DEFAULTS["data"], "synthetic": synth, "mask_noise": {"box": True, "dilate": 2}})
    domain = next(iter(plain.train))
    for i in range(3):
        want = degrade_mask(plain.train[domain][i]["mask"].float(), box=True, dilate=2)
        assert torch.equal(noisy.train[domain][i]["mask"].float(), want)
    split = next(iter(plain.tests))
    assert torch.equal(noisy.tests[split][0]["mask"], plain.tests[split][0]["mask"])
    with pytest.raises(egl.InputError, match="'data.mask_noise.dilute' expected one of NoisyMasks' settings .*"
                                             "Did you mean 'data.mask_noise.dilate'"):
        check_values(apply_overrides(DEFAULTS, ["data.mask_noise={dilute: 2}"]))
    with pytest.raises(egl.InputError, match="'data.mask_noise.shift' expected a whole number of pixels"):
        check_values(apply_overrides(DEFAULTS, ["data.mask_noise={shift: -2}"]))
    with pytest.raises(egl.InputError, match="'data.mask_noise' expected null or a mapping"):
        check_values(apply_overrides(DEFAULTS, ["data.mask_noise=box"]))
    assert check_values(apply_overrides(DEFAULTS, ["data.mask_noise={box: true, shift: 3}"])) is None


def test_large_seeds_work_and_masks_outside_the_unit_range_are_named() -> None:
    assert NoisyMasks(_data(), shift=2, seed=2**63 - 1).offset(5) != (99, 99)
    with pytest.raises(egl.InputError, match="'dataset' expected masks with values in \\[0, 1\\], got item 0's mask "
                                             "in \\[0, 255\\]"):
        NoisyMasks([{"image": torch.rand(3, 10, 10), "mask": (_blob() * 255).to(torch.uint8)}], box=True)[0]
    with pytest.raises(egl.InputError, match="'data.mask_noise.seed' expected an int in \\[0, 2\\*\\*63\\)"):
        from egl.data.noisy_masks import as_mask_noise

        as_mask_noise({"seed": -1}, "egl.experiments", "data.mask_noise")


def test_group_labels_are_read_through_it_without_loading_items() -> None:
    from egl.data import item_labels

    class Counting(TensorDictDataset):
        reads = 0

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            Counting.reads += 1
            return super().__getitem__(i)

    data = _data()
    labels = item_labels(NoisyMasks(Counting({**data.tensors, "domain": torch.arange(6) % 2}), box=True),
                         "domain_class")
    assert Counting.reads == 0 and torch.equal(labels["label"], data.tensors["label"])
