"""MaskedBy: a frozen masker's masks computed once on the un-augmented images, carried by the
items, moved by augmentation with their images, read by ALIGN as ground truth."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model, tiny_sam_config
from torch.utils.data import ConcatDataset, DataLoader, Subset

import egl
from egl import recipes
from egl.data import Augment, Augmented, MaskedBy
from egl.maskers import GrayscaleMasker, GroundTruthMasker, LearnedMasker


def _data(n: int = 5, size: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, size, size, generator=g), "label": torch.tensor(i % 3),
             "mask": torch.zeros(1, size, size), "annotated": torch.tensor(False)} for i in range(n)]


class _Counting(GrayscaleMasker):
    calls = 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        type(self).calls += 1
        return super().forward(x, mask)


def test_masks_are_the_maskers_of_the_plain_images_computed_once_in_batches() -> None:
    data = _data(5)
    _Counting.calls = 0
    masked = MaskedBy(data, _Counting(), batch_size=2)
    assert _Counting.calls == 3 and len(masked) == 5  # ceil(5 / 2) calls at construction, none after
    for i in range(5):
        item = masked[i]
        assert sorted(item) == ["image", "label", "mask"]  # the placeholder replaced, the flag dropped
        want = GrayscaleMasker()(data[i]["image"][None])[0]
        assert item["mask"].dtype == torch.float16 and torch.allclose(item["mask"].float(), want, atol=1e-3)
    assert _Counting.calls == 3
    masked[0]["mask"].fill_(0.5)  # an item's mask is its own copy
    assert not torch.equal(masked[0]["mask"], torch.full_like(masked[0]["mask"], 0.5))


def test_augmentation_moves_the_mask_with_its_image() -> None:
    flip = Augment(crop_scale=None, flip=1.0, brightness=0.3, contrast=0.0, saturation=0.0, hue=0.0, grayscale=0.0)
    luminance = GrayscaleMasker(rescale="clamp")  # (min-max would undo the brightness change)
    data = _data(3)
    train = Augmented(MaskedBy(data, luminance), flip)
    torch.manual_seed(0)
    item = train[1]
    plain = luminance(data[1]["image"][None])[0]
    assert torch.allclose(item["mask"].float(), plain.flip(-1), atol=1e-3)  # flipped with the image...
    jittered = luminance(item["image"][None])[0]
    assert not torch.allclose(item["mask"].float(), jittered, atol=1e-2)  # ...not remade from the brightened one


def test_align_reads_them_as_ground_truth() -> None:
    train = Augmented(MaskedBy(_data(8, size=32), GrayscaleMasker()), "flip")
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), masker="ground_truth", warmup_steps=0)
    logs = recipe.fit(DataLoader(train, batch_size=4), steps=2, seed=0, progress=False)
    assert "classifier/align" in logs[-1] and all(torch.isfinite(torch.tensor(v)) for v in logs[-1].values())


def test_sam_masks_are_the_maskers() -> None:
    transformers = pytest.importorskip("transformers")
    from egl.maskers import SAMMasker

    sam = SAMMasker(model=transformers.SamModel(tiny_sam_config()).eval(), points_per_side=2)
    data = _data(3, size=64)
    masked = MaskedBy(data, sam, batch_size=2)
    want = sam(torch.stack([d["image"] for d in data]))
    assert torch.allclose(masked.masks.float(), want, atol=1e-3)


class _Bad(torch.nn.Module):
    def __init__(self, value: float, shape: str = "b1hw") -> None:
        super().__init__()
        self.value, self.shape = value, shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = torch.full_like(x[:, :1], self.value)
        return m[:, 0] if self.shape == "bhw" else m[:, :, :4] if self.shape == "small" else m


class _Half(torch.nn.Module):
    """A masker holding only a float64 buffer: images must arrive in its dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(0.5, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float64
        return (x[:, :1] * self.scale).clamp(0, 1)


def test_masker_outputs_are_checked_and_its_dtype_followed() -> None:
    assert MaskedBy(_data(3), _Bad(0.25, "bhw"))[0]["mask"].shape == (1, 16, 16)  # [B, H, W] taken as one channel
    for value in (1.5, -0.1, float("nan"), float("inf")):
        with pytest.raises(egl.InputError, match=r"'masker' expected finite masks in \[0, 1\], got values in"):
            MaskedBy(_data(3), _Bad(value))
    with pytest.raises(egl.InputError, match=r"'masker' expected masks of shape \[2, 1, 16, 16\]"):
        MaskedBy(_data(3), _Bad(0.5, "small"), batch_size=2)
    masked = MaskedBy(_data(2), _Half())
    assert torch.allclose(masked[1]["mask"].float(), (_data(2)[1]["image"][:1] * 0.5), atol=1e-3)


def test_group_labels_are_read_without_loading_the_images() -> None:
    from egl.data import SyntheticConfig, SyntheticShortcuts, item_labels

    plain = SyntheticShortcuts("train", SyntheticConfig(train_per_domain=8, val_per_domain=2, test_per_split=2),
                               cache=False)
    masked = MaskedBy(plain, GrayscaleMasker())
    reads = []
    original = MaskedBy.__getitem__
    try:
        MaskedBy.__getitem__ = lambda self, i: reads.append(i) or original(self, i)  # type: ignore[method-assign]
        labels = item_labels(masked, "shortcut")
    finally:
        MaskedBy.__getitem__ = original  # type: ignore[method-assign]
    assert not reads and torch.equal(labels["label"], plain.tensors["label"])


def test_bad_arguments_are_named() -> None:
    with pytest.raises(egl.InputError, match=r"'masker' expected a frozen masker.*got a trainable masker"):
        MaskedBy(_data(), LearnedMasker())
    with pytest.raises(egl.InputError, match=r"'masker' expected.*got a masker that reads the data's masks"):
        MaskedBy(_data(), GroundTruthMasker())
    with pytest.raises(egl.InputError, match=r"'masker' expected"):
        MaskedBy(_data(), lambda x: x)
    with pytest.raises(egl.InputError, match=r"'dataset' expected dict items with an 'image'.*at index 0"):
        MaskedBy([(torch.rand(3, 8, 8), 0)], GrayscaleMasker())
    mixed = _data(3) + [{"image": torch.rand(3, 8, 8), "label": torch.tensor(0)}]
    with pytest.raises(egl.InputError, match=r"'dataset' expected images of one size \(the first: \[3, 16, 16\]\), "
                                             r"got \[3, 8, 8\] at index 3"):
        MaskedBy(mixed, GrayscaleMasker(), batch_size=2)
    with pytest.raises(egl.InputError, match=r"'dataset' expected at least one item"):
        MaskedBy([], GrayscaleMasker())
    with pytest.raises(egl.InputError, match=r"'batch_size'"):
        MaskedBy(_data(), GrayscaleMasker(), batch_size=0)
    with pytest.raises(egl.InputError, match=r"'dataset' expected a map-style data set"):
        MaskedBy(iter(_data()), GrayscaleMasker())
    augmented = Augmented(_data(), "flip")
    for ds in (augmented, Subset(augmented, [0, 1]), ConcatDataset([_data(), augmented])):
        with pytest.raises(egl.InputError, match=r"'dataset' expected a data set that does not augment its items.*"
                                                 r"Augmented\(MaskedBy\(plain, masker\)"):
            MaskedBy(ds, GrayscaleMasker())
    MaskedBy(Augmented(_data(), "none"), GrayscaleMasker())  # (no augmentation: fine)
