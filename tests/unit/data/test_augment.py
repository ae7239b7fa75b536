"""Training augmentation: masks move with their images, photometric changes leave masks alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _helpers import domain_tree
from PIL import Image

import egl
from egl.data import Augment, Augmented, DomainFolder
from egl.data.augment import PRESETS, as_augment

GEOMETRIC = {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0, "grayscale": 0.0}


def _marked(h: int = 40, w: int = 56, seed: int = 0) -> dict[str, torch.Tensor]:
    """An image whose red channel *is* its mask (blobs), green a horizontal ramp (shows flips)."""
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(1, h // 4, w // 4, generator=g) > 0.5).float().repeat_interleave(4, 1).repeat_interleave(4, 2)
    ramp = torch.linspace(0, 1, w).expand(1, h, w)
    return {"image": torch.cat([mask, ramp, torch.zeros(1, h, w)]), "mask": mask.clone(), "label": torch.tensor(3)}


def test_geometric_transforms_move_the_mask_with_the_image() -> None:
    item, aug = _marked(), Augment(**GEOMETRIC)
    torch.manual_seed(0)
    flips = 0
    for _ in range(40):
        out = aug(item, size=(24, 32))
        assert out["image"].shape == (3, 24, 32) and out["mask"].shape == (1, 24, 32)
        torch.testing.assert_close(out["image"][:1], out["mask"], rtol=0, atol=0)  # same crop, same flip
        flips += bool(out["image"][1, :, 0].mean() > out["image"][1, :, -1].mean())  # the ramp runs backwards
    assert 8 <= flips <= 32  # p = 0.5 of 40 draws


def test_photometric_transforms_change_the_image_and_leave_the_mask() -> None:
    item = _marked()
    torch.manual_seed(3)
    geometric = Augment(**GEOMETRIC)(item)
    torch.manual_seed(3)
    full = Augment(grayscale=1.0)(item)  # same draws for crop and flip, then jitter and grey
    torch.testing.assert_close(full["mask"], geometric["mask"], rtol=0, atol=0)
    assert not torch.equal(full["image"], geometric["image"])
    torch.testing.assert_close(full["image"][0], full["image"][1])  # grey, kept as 3 channels
    torch.testing.assert_close(full["image"][1], full["image"][2])


def test_crops_follow_randomresizedcrop_ranges() -> None:
    image = torch.zeros(3, 60, 80)
    aug = Augment(crop_scale=(0.7, 1.0))
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = aug._crop_box(image)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        assert 0.7 * 4800 - 80 <= h * w <= 4800  # (rounding of each side)
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05 or (h, w) == (60, 80) or w / h == pytest.approx(80 / 60)


def test_values_stay_in_range_keys_pass_through_and_the_item_is_not_changed() -> None:
    item = _marked()
    soft = {**item, "mask": torch.rand(1, 40, 56, dtype=torch.float64), "image": item["image"].double(),
            "domain": torch.tensor(1)}
    before = {k: v.clone() for k, v in soft.items()}
    torch.manual_seed(1)
    for _ in range(20):
        out = Augment(brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5)(soft, size=(17, 23))
        for k in ("image", "mask"):
            assert out[k].dtype == torch.float64 and 0 <= float(out[k].min()) and float(out[k].max()) <= 1
        assert int(out["label"]) == 3 and int(out["domain"]) == 1
    assert all(torch.equal(soft[k], before[k]) for k in soft)


def test_off_settings_are_the_identity_and_draws_follow_torch_seed() -> None:
    item = _marked()
    out = Augment(crop_scale=None, flip=0.0, **GEOMETRIC)(item)
    assert torch.equal(out["image"], item["image"]) and torch.equal(out["mask"], item["mask"])
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        runs.append(Augment()(item, size=(20, 20)))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in ("image", "mask"))
    no_mask = Augment()({"image": item["image"]})
    assert set(no_mask) == {"image"}


def test_presets() -> None:
    assert as_augment("none", "f") is None and as_augment(None, "f") is None
    domainbed = Augment.preset("domainbed")
    assert (domainbed.crop_scale, domainbed.flip, domainbed.grayscale) == ((0.7, 1.0), 0.5, 0.1)
    assert (domainbed.brightness, domainbed.contrast, domainbed.saturation, domainbed.hue) == (0.3,) * 4
    flip = as_augment("flip", "f")
    assert flip.crop_scale is None and flip._jitter is None and flip.grayscale == 0 and flip.flip == 0.5
    assert as_augment({"flip": 0.0}, "f").flip == 0.0
    mine = Augment(flip=1.0)
    assert as_augment(mine, "f") is mine
    assert set(PRESETS) == {"none", "flip", "domainbed"}


@pytest.mark.parametrize(("kwargs", "arg"), [
    ({"crop_scale": (0.0, 1.0)}, "crop_scale"), ({"crop_scale": (0.9, 0.7)}, "crop_scale"),
    ({"crop_scale": (0.5, 1.5)}, "crop_scale"), ({"crop_scale": 0.7}, "crop_scale"),
    ({"crop_ratio": (1.0, math.inf)}, "crop_ratio"), ({"flip": 1.5}, "flip"), ({"flip": True}, "flip"),
    ({"brightness": -0.1}, "brightness"), ({"contrast": float("nan")}, "contrast"), ({"hue": 0.6}, "hue"),
    ({"saturation": "0.3"}, "saturation"), ({"grayscale": -1}, "grayscale"),
])
def test_bad_settings_are_named(kwargs: dict, arg: str) -> None:
    with pytest.raises(egl.InputError, match=rf"egl.data.Augment: '{arg}' expected"):
        Augment(**kwargs)


@pytest.mark.parametrize(("item", "arg"), [
    (torch.rand(3, 8, 8), "item"), ({"mask": torch.rand(1, 8, 8)}, "item"),
    ({"image": (torch.rand(3, 8, 8) * 255).byte()}, r"item\['image'\]"),
    ({"image": torch.rand(1, 3, 8, 8)}, r"item\['image'\]"), ({"image": torch.rand(1, 8, 8)}, r"item\['image'\]"),
    ({"image": torch.rand(3, 8, 8), "mask": torch.rand(1, 8, 9)}, r"item\['mask'\]"),
    ({"image": torch.rand(3, 8, 8), "mask": torch.ones(1, 8, 8, dtype=torch.bool)}, r"item\['mask'\]"),
])
def test_bad_items_are_named(item: object, arg: str) -> None:
    with pytest.raises(egl.InputError, match=rf"'{arg}' expected"):
        Augment()(item)


def test_bad_size_and_specs_are_named() -> None:
    with pytest.raises(egl.InputError, match="'size' expected"):
        Augment()({"image": torch.rand(3, 8, 8)}, size=8)
    with pytest.raises(egl.InputError, match=r"'data.augment' expected one of \['none', 'flip', 'domainbed'\]"):
        as_augment("domainbedd", "egl.experiments", "data.augment")
    with pytest.raises(egl.InputError, match=r"'augment.flips' expected .* Did you mean 'augment.flip'"):
        as_augment({"flips": 0.5}, "f")
    with pytest.raises(egl.InputError, match=r"f: 'augment.crop_scale' expected a pair"):
        as_augment({"crop_scale": [0.9, 0.1]}, "f")
    with pytest.raises(egl.InputError, match="'augment' expected"):
        as_augment(3, "f")
    with pytest.raises(egl.InputError, match="'dataset' expected a map-style"):
        Augmented(object(), "flip")


def test_augmented_wraps_a_dataset() -> None:
    items = [_marked(seed=s) for s in range(3)]
    plain = Augmented(items, "none")
    assert len(plain) == 3 and plain[1] is items[1]
    torch.manual_seed(0)
    aug = Augmented(items, Augment(**GEOMETRIC))
    out = aug[2]
    torch.testing.assert_close(out["image"][:1], out["mask"], rtol=0, atol=0)
    assert out["image"].shape == items[2]["image"].shape


def _marked_folder(root, n: int = 5):
    """Domain folders whose images' red channel is their mask (at 30x44, not square)."""
    rng = np.random.default_rng(0)
    for d in ("A", "B"):
        for c in ("cat", "dog"):
            (root / d / c).mkdir(parents=True)
            (root / "masks" / d / c).mkdir(parents=True)
            for i in range(n):
                m = np.zeros((30, 44), np.uint8)
                top, left = rng.integers(0, 15), rng.integers(0, 22)
                m[top:top + 12, left:left + 18] = 255
                Image.fromarray(np.stack([m, rng.integers(0, 255, m.shape, dtype=np.uint8), m * 0], -1)).save(
                    root / d / c / f"{i}.png")
                Image.fromarray(m).save(root / "masks" / d / c / f"{i}.png")
    return root


def test_domain_folder_crops_image_and_mask_together_at_file_resolution(tmp_path) -> None:
    root = _marked_folder(tmp_path)
    ds = DomainFolder(root, "train", image_size=20, augment=Augment(**GEOMETRIC))
    torch.manual_seed(0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 20, 20) and item["mask"].shape == (1, 20, 20)
        torch.testing.assert_close(item["image"][:1], item["mask"], rtol=0, atol=0)
    plain = DomainFolder(root, "train", image_size=20, augment="none")
    off = DomainFolder(root, "train", image_size=20, augment=Augment(crop_scale=None, flip=0.0, **GEOMETRIC))
    for i in range(3):  # no augmentation reads exactly as before: one resize of the file
        assert all(torch.equal(plain[i][k], off[i][k]) for k in ("image", "mask"))
    with pytest.raises(egl.InputError, match="egl.data.DomainFolder: 'augment' expected"):
        DomainFolder(root, "train", augment="crop")


def test_domain_folder_takes_seeds_beyond_the_generator_range(tmp_path) -> None:
    root = domain_tree(tmp_path)
    for seed in (2**64, 10**30, -(2**70)):
        parts = {s: {x.path for x in DomainFolder(root, s, image_size=8, seed=seed).samples}
                 for s in ("train", "val", "test")}
        assert [len(parts[s]) for s in ("train", "val", "test")] == [24, 8, 8]
        assert len(parts["train"] | parts["val"] | parts["test"]) == 40


def test_torchvision_transforms_and_classes_are_refused() -> None:
    from torchvision.transforms import v2

    for spec in (v2.RandomHorizontalFlip(p=1.0), Augment):
        with pytest.raises(egl.InputError, match="'augment' expected a preset name.*moves the mask with the image"):
            Augmented([_marked()], spec)

    def mine(item, size=None):  # noqa: ANN001, ANN202 - a user's own joint transform
        return {**item, "image": item["image"].flip(-1), "mask": item["mask"].flip(-1)}

    out = Augmented([_marked()], mine)[0]
    torch.testing.assert_close(out["image"][:1], out["mask"], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_items_keep_their_dtype(dtype: torch.dtype) -> None:
    item = {k: v.to(dtype) if v.is_floating_point() else v for k, v in _marked().items()}
    torch.manual_seed(0)
    out = Augment()(item, size=(24, 32))
    assert out["image"].dtype == out["mask"].dtype == dtype and out["image"].shape == (3, 24, 32)
