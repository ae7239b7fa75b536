"""Items read from image files: what :class:`~egl.data.DomainFolder` and :class:`~egl.data.ImageCSV` share.

An item is a dict ``image [3, S, S]`` in [0, 1], ``label``, ``domain`` and, when the data has
them, ``mask [1, S, S]`` in [0, 1] and ``shortcut`` (the class a spurious feature of the image
stands for, -1 for none: what :func:`egl.metrics.shortcut_rate` and worst-group accuracy read).

Masks are grey images of their image's size: 0-255 (0-65535 for 16-bit files; a colour mask by
its brightest channel) or, when their largest level is 1, 0/1 label images. A largest level from
2 to ``LABEL_MAX`` (15) is most likely a class-label image (0/1/2 classes, a 1/2/3 trimap),
nearly empty read as 0-255: the first one loaded warns, naming the file (a faint 0-255 mask can
peak there too). Images and masks are resized to ``S x S`` (bilinear, antialiased), or cropped at
the file's resolution and resized once when an ``augment`` is given.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from egl._check import check_choice, check_flag, check_int, fail
from egl.data.image_file import read_levels, read_mask_levels, upright_fits

__all__ = ["Sample", "ImageItems", "verify_images", "check_read_args", "LABEL_MAX", "MISSING_MASKS"]

MISSING_MASKS = ("raise", "unannotated")
LABEL_MAX = 15  # a mask whose largest level is 2..LABEL_MAX is a class-label image, not 0-255


@dataclass(frozen=True)
class Sample:
    """One image: its path, class index, domain index, (optional) mask path and (optional) shortcut
    class (the class a spurious feature of the image stands for; -1: none)."""

    path: Path
    label: int
    domain: int
    mask: Path | None
    shortcut: int | None = None


def check_read_args(fn: str, *, split: object, splits: Sequence[str], on_error: object, missing_masks: object,
                    image_size: object, seed: object, verify: object) -> int:
    """The arguments every file-backed data set takes, checked at once; returns the seed as an int."""
    check_choice(split, (*splits, "all"), fn, "split")
    check_choice(on_error, ("raise", "skip"), fn, "on_error")
    check_choice(missing_masks, MISSING_MASKS, fn, "missing_masks")
    check_int(image_size, fn, "image_size", low=1, fix="Pass e.g. image_size=224")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise fail(fn, "seed", "an int", repr(seed)[:100], "Pass an int seed, e.g. seed=0 (it draws the split)")
    check_flag(verify, fn, "verify")
    return int(seed)


def verify_images(samples: list[Sample], on_error: str, fn: str, arg: str) -> list[Sample]:
    """``samples`` whose image (and mask) PIL can open and verify, the mask of its image's size
    (read from the headers; or of its upright size, turned by EXIF); a bad one raises naming the files
    (``on_error="raise"``) or is dropped with a warning (``"skip"``)."""
    from PIL import Image

    good = []
    for s in samples:
        try:
            with Image.open(s.path) as im:
                im.verify()  # (only directly after open)
            if s.mask is not None:
                with Image.open(s.mask) as m:
                    m.verify()
                with Image.open(s.path) as im, Image.open(s.mask) as m:
                    size, mask_size = im.size, m.size
                if mask_size != size and not upright_fits(s.path, (mask_size[1], mask_size[0])):
                    raise ValueError(f"its mask '{s.mask}' is {mask_size[0]}x{mask_size[1]}, the image "
                                     f"{size[0]}x{size[1]} (width x height)")
        except Exception as exc:  # noqa: BLE001 - any decoder failure means unreadable
            if on_error == "raise":
                raise fail(fn, arg, "readable images, each mask of its image's size",
                           f"'{s.path}' ({type(exc).__name__}: {exc})",
                           "Remove or replace the file, or pass on_error='skip'") from exc
            warnings.warn(f"{fn}: skipping image '{s.path}': {exc}", stacklevel=3)
            continue
        good.append(s)
    return good


class ImageItems(Dataset):
    """A data set over :class:`Sample` s (see the module doc for the items).

    Args:
        samples: the images, in item order.
        image_size: the side images and masks are resized to.
        augment: an :class:`~egl.data.Augment` (or None), applied at the file's resolution.
        fn, arg: the data set's name and argument, for errors and warnings.
        mask_fix: what to do when some samples have masks and others not.
        missing_masks: when some samples have masks and others not: ``"raise"`` (an error
            naming one without, and ``mask_fix``) or ``"unannotated"`` (those items get an
            all-zero mask and ``annotated=False``, the others ``annotated=True``: partial
            annotation, see :class:`egl.data.PartialMasks`; a set where every image has a mask
            flags them all, so that sets combined with ``ConcatDataset`` have the same keys).
    """

    def __init__(self, samples: Sequence[Sample], *, image_size: int, augment: object, fn: str, arg: str,
                 mask_fix: str, missing_masks: str = "raise") -> None:
        check_choice(missing_masks, MISSING_MASKS, fn, "missing_masks")
        self.samples = list(samples)
        with_mask = sum(s.mask is not None for s in self.samples)
        # (every set with masks read with "unannotated" flags its items, all annotated or not: combined
        # with ConcatDataset, a fully annotated set's items then have the keys a partial one's have)
        self.partial = 0 < with_mask and missing_masks == "unannotated"
        if 0 < with_mask < len(self.samples) and missing_masks != "unannotated":
            first = next(s for s in self.samples if s.mask is None)
            raise fail(fn, arg, "a mask for every image or for none",
                       f"{len(self.samples) - with_mask} of {len(self.samples)} images without one "
                       f"(e.g. '{first.path}')", f"{mask_fix}, or pass missing_masks='unannotated' (images "
                       "without a mask then train without mask supervision)")
        self.has_masks = with_mask > 0
        self.image_size = image_size
        self.augment = augment
        self._fn, self._arg = fn, arg
        self._warned_label_mask = False  # a mask peaking at 2..LABEL_MAX was warned about
        self._warned_wide_mask = False  # a 16-bit mask peaking at LABEL_MAX + 1..255

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, path: Path, mode: str, upright: bool = False) -> tuple[Tensor, int]:
        """The file's levels ``[C, H, W]`` and their full scale (255, or 65535 for 16-bit files)."""
        return read_levels(path, mode, self._fn, self._arg, upright=upright)

    def _resize(self, t: Tensor) -> Tensor:
        return F.interpolate(t[None], size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False, antialias=True)[0].clamp_(0, 1)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        s = self.samples[i]
        image, image_full = self._read(s.path, "RGB")
        item = {"image": image.float().div_(image_full), "label": torch.tensor(s.label),
                "domain": torch.tensor(s.domain)}
        if s.shortcut is not None:
            item["shortcut"] = torch.tensor(s.shortcut)
        if s.mask is not None:
            mask = self._read_mask(s)
            if mask.shape[-2:] != image.shape[-2:] and upright_fits(s.path, tuple(mask.shape[-2:])):
                image, image_full = self._read(s.path, "RGB", upright=True)  # (a mask drawn on the shown image)
                item["image"] = image.float().div_(image_full)
            if mask.shape[-2:] != image.shape[-2:]:
                raise fail(self._fn, self._arg, "a mask of its image's size",
                           f"'{s.mask}' of {mask.shape[-1]}x{mask.shape[-2]} for '{s.path}' of "
                           f"{image.shape[-1]}x{image.shape[-2]} (width x height)",
                           "Save the mask at its image's size (a stretched mask would point elsewhere)")
            item["mask"] = mask
        elif self.partial:  # an image without an annotation: a placeholder, flagged
            item["mask"] = torch.zeros(1, *image.shape[-2:])
        if self.partial:
            item["annotated"] = torch.tensor(s.mask is not None)
        if self.augment is not None:
            return self.augment(item, size=(self.image_size, self.image_size))
        item["image"] = self._resize(item["image"])
        if "mask" in item:
            item["mask"] = self._resize(item["mask"])
        return item

    def _read_mask(self, s: Sample) -> Tensor:
        """``s``'s mask at its file's resolution, ``[1, H, W]`` in [0, 1]."""
        assert s.mask is not None
        # palette indices, a cut-out's alpha, or the brightest channel (PIL's "L" read red as 0.3)
        mask, mask_full, how = read_mask_levels(s.mask, self._fn, self._arg)
        top = int(mask.max())
        if 2 <= top <= LABEL_MAX and not self._warned_label_mask:  # read as 0-255 it peaks at 0.06
            self._warned_label_mask = True
            warnings.warn(f"{self._fn}: the mask '{s.mask}' has levels 0 to {top}: read as 0-{mask_full} "
                          f"({mask_full} = foreground) it is nearly empty. If it is a class-label image (0/1/2 "
                          "classes, a 1/2/3 trimap), save each mask as foreground 255 (or 1) on background 0, "
                          "e.g. Image.fromarray(((labels == k) * 255).astype('uint8')) for class k. (Warned "
                          "once per data set.)", stacklevel=3)
        if how == "labels" and not self._warned_label_mask:
            self._warned_label_mask = True  # (VOC's class masks: 0 background, 1-20 classes, 255 the void border)
            warnings.warn(f"{self._fn}: the palette mask '{s.mask}' uses more than two colours: read by their "
                          "brightness; if it is a class-label image (VOC: one colour per class, white the void "
                          "border), save each mask as foreground 255 on background 0. (Warned once per data set.)",
                          stacklevel=3)
        if how == "grey" and LABEL_MAX < top <= 255:  # 0/255 saved as 16 bits: read as 0-65535 it is empty
            mask_full = 255
            if not self._warned_wide_mask:
                self._warned_wide_mask = True
                warnings.warn(f"{self._fn}: the 16-bit mask '{s.mask}' peaks at {top}: read as 0-255 (read as "
                              "0-65535 it would be nearly empty). Save masks as 8-bit files to silence this. "
                              "(Warned once per data set.)", stacklevel=3)
        full = 1 if top == 1 else mask_full  # a 0/1 label image, or 0-255 (0-65535)
        return mask.float().div_(full)
