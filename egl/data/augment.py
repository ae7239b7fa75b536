"""Training-time augmentation that moves each mask with its image.

Explanation-guided training reads a mask per image (ground truth, or a masker's output that
is compared with the image's saliency), so a random crop or flip of the image must crop or
flip its mask the same way, or the loss aligns the saliency with pixels that are no longer
there. :class:`Augment` draws one set of parameters per item and applies the *geometric*
transforms (random resized crop, horizontal flip) to ``image`` and ``mask`` alike, the
*photometric* ones (colour jitter, random greyscale) to ``image`` only; other keys pass
through unchanged.

Preset ``"domainbed"`` is DomainBed's training augmentation (Gulrajani & Lopez-Paz, "In Search
of Lost Domain Generalization", ICLR 2021, ``domainbed/datasets.py``): ``RandomResizedCrop(scale=
(0.7, 1.0))``, ``RandomHorizontalFlip()``, ``ColorJitter(0.3, 0.3, 0.3, 0.3)``,
``RandomGrayscale()`` (p = 0.1). ALIGN (Hong et al., AAAI 2026) does not state its augmentation;
egl's experiments default to none (``data.augment``), so their measured results read the
method alone. ``"flip"`` is the horizontal flip only; ``"none"`` is no augmentation.

Random draws come from torch's global generator, as torchvision's transforms do: in a
``DataLoader``'s workers that generator is seeded per worker from the loader's ``generator=``
(or the global one), and :func:`egl.train.fit`'s resume replays the draws.
Items stay in [0, 1]: the crop is resized back with antialiased bilinear interpolation (the
resize :class:`~egl.data.DomainFolder` uses) and clamped, so a soft mask stays soft.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from egl._check import check_known_keys, check_size, describe, fail

__all__ = ["Augment", "Augmented", "PRESETS", "as_augment"]

_FN = "egl.data.Augment"

#: Named settings of :class:`Augment` (``"none"``: no augmentation).
PRESETS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "flip": {"crop_scale": None, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
             "grayscale": 0.0},
    "domainbed": {},  # Augment's defaults are DomainBed's
}


def _probability(value: object, fn: str, arg: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
        raise fail(fn, arg, "a probability in [0, 1]", repr(value)[:100], f"Pass e.g. {arg}=0.5 (0 turns it off)")
    return float(value)


def _strength(value: object, fn: str, arg: str, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= high:
        within = "a number >= 0" if high == math.inf else f"a number in [0, {high}]"
        raise fail(fn, arg, f"{within} (0 turns it off)", repr(value)[:100], f"Pass e.g. {arg}=0.3")
    return float(value)


def _interval(value: object, fn: str, arg: str, high: float, example: str) -> tuple[float, float]:
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
          and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok or not 0 < value[0] <= value[1] <= high:  # type: ignore[index]
        bound = "<= 1" if high == 1 else "finite"
        raise fail(fn, arg, f"a pair (low, high) with 0 < low <= high, {bound}", repr(value)[:100],
                   f"Pass e.g. {arg}={example}")
    return float(value[0]), float(value[1])  # type: ignore[index]


def _settings(fn: str, prefix: str, crop_scale: object, crop_ratio: object, flip: object, brightness: object,
              contrast: object, saturation: object, hue: object, grayscale: object) -> dict[str, Any]:
    """The settings checked and normalised; errors name ``<prefix><setting>`` (``data.augment.hue``)."""
    return {
        "crop_scale": None if crop_scale is None else _interval(crop_scale, fn, prefix + "crop_scale", 1.0,
                                                                "(0.7, 1.0)"),
        "crop_ratio": _interval(crop_ratio, fn, prefix + "crop_ratio", math.inf, "(3 / 4, 4 / 3)"),
        "flip": _probability(flip, fn, prefix + "flip"),
        **{k: _strength(v, fn, prefix + k) for k, v in
           (("brightness", brightness), ("contrast", contrast), ("saturation", saturation))},
        "hue": _strength(hue, fn, prefix + "hue", 0.5),
        "grayscale": _probability(grayscale, fn, prefix + "grayscale"),
    }


class Augment:
    """Random crop, flip, colour jitter and greyscale for item dicts, masks moved with images.

    Args:
        crop_scale: the crop's share of the image's area, drawn uniformly from this range
            (``RandomResizedCrop``'s ``scale``; default (0.7, 1.0), DomainBed's); None: no crop.
        crop_ratio: the crop's aspect ratio range, drawn log-uniformly (default (3/4, 4/3),
            torchvision's).
        flip: probability of a horizontal flip (0.5).
        brightness, contrast, saturation: colour jitter strengths (0.3 each, DomainBed's): the
            factor is drawn from ``[max(0, 1 - s), 1 + s]``; 0 turns one off.
        hue: hue shift range ``[-hue, hue]``, at most 0.5 (0.3, DomainBed's).
        grayscale: probability of turning the image grey, kept as 3 channels (0.1).

    Call it as ``augment(item)`` or ``augment(item, size=(H, W))``: ``item["image"]`` is a
    ``[3, H, W]`` float image in [0, 1] and ``item["mask"]``, when present, a ``[1, H, W]``
    float mask of the same height and width; ``size`` is the output's (default: the input's),
    so a data set can crop at the file's resolution and resize once.

    Shape:
        image: ``3 H W``; mask: ``1 H W``; both return as ``size``.

    Raises:
        InputError: a bad setting at construction; at a call, an item without an ``image``,
            an image that is not a float ``[3, H, W]`` tensor, a mask that is not a float
            ``[1, H, W]`` tensor of the image's size, or a bad ``size``.

    Example:
        >>> import torch
        >>> from egl.data import Augment
        >>> item = {"image": torch.rand(3, 32, 32), "mask": torch.zeros(1, 32, 32), "label": torch.tensor(2)}
        >>> out = Augment()(item, size=(24, 24))
        >>> out["image"].shape, out["mask"].shape, int(out["label"])
        (torch.Size([3, 24, 24]), torch.Size([1, 24, 24]), 2)
    """

    def __init__(self, *, crop_scale: tuple[float, float] | None = (0.7, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: float = 0.5, brightness: float = 0.3,
                 contrast: float = 0.3, saturation: float = 0.3, hue: float = 0.3, grayscale: float = 0.1) -> None:
        from torchvision.transforms import v2

        settings = _settings(_FN, "", crop_scale, crop_ratio, flip, brightness, contrast, saturation, hue, grayscale)
        self.crop_scale: tuple[float, float] | None = settings["crop_scale"]
        self.crop_ratio: tuple[float, float] = settings["crop_ratio"]
        self.flip: float = settings["flip"]
        self.brightness: float = settings["brightness"]
        self.contrast: float = settings["contrast"]
        self.saturation: float = settings["saturation"]
        self.hue: float = settings["hue"]
        self.grayscale: float = settings["grayscale"]
        jitter = (self.brightness, self.contrast, self.saturation, self.hue)
        self._jitter = v2.ColorJitter(*(s or None for s in jitter)) if any(jitter) else None

    @classmethod
    def preset(cls, name: str) -> Augment | None:
        """The augmentation of :data:`PRESETS` ``name`` (``"none"``: None)."""
        if name not in PRESETS:
            raise fail(_FN, "name", f"one of {list(PRESETS)}", repr(name)[:100], "Pick e.g. 'domainbed'")
        settings = PRESETS[name]
        return None if settings is None else cls(**settings)

    def __call__(self, item: Mapping[str, Any], size: Sequence[int] | None = None) -> dict[str, Any]:
        image, mask = self._check(item)
        out_size = tuple(image.shape[-2:]) if size is None else check_size(size, _FN)
        dtypes = (image.dtype, None if mask is None else mask.dtype)
        if image.dtype in (torch.float16, torch.bfloat16):  # (no 16-bit antialiased resize on the CPU)
            image = image.float()
        if mask is not None and mask.dtype in (torch.float16, torch.bfloat16):
            mask = mask.float()
        top, left, h, w = self._crop_box(image)
        image = _crop_resize(image, top, left, h, w, out_size)
        mask = None if mask is None else _crop_resize(mask, top, left, h, w, out_size)
        if self.flip and bool(torch.rand(()) < self.flip):
            image = image.flip(-1)
            mask = None if mask is None else mask.flip(-1)
        if self._jitter is not None:
            image = self._jitter(image)
        if self.grayscale and bool(torch.rand(()) < self.grayscale):
            from torchvision.transforms.v2.functional import rgb_to_grayscale

            image = rgb_to_grayscale(image, num_output_channels=3)
        out = dict(item)
        out["image"] = image.to(dtypes[0])
        if mask is not None:
            out["mask"] = mask.to(dtypes[1])
        return out

    def _check(self, item: object) -> tuple[Tensor, Tensor | None]:
        if not isinstance(item, Mapping) or "image" not in item:
            raise fail(_FN, "item", "a dict with an 'image' (and optionally a 'mask')", describe(item),
                       "Pass one data set item, e.g. dataset[0]")
        image, mask = item["image"], item.get("mask")
        if not (isinstance(image, Tensor) and image.is_floating_point() and image.dim() == 3 and image.shape[0] == 3):
            raise fail(_FN, "item['image']", "a float [3, H, W] RGB image in [0, 1]", describe(image),
                       "Convert it with image.float() / 255 (uint8), or repeat a grey image to 3 channels")
        if mask is not None and not (isinstance(mask, Tensor) and mask.is_floating_point() and mask.dim() == 3
                                     and mask.shape[0] == 1 and mask.shape[-2:] == image.shape[-2:]):
            raise fail(_FN, "item['mask']", f"a float [1, {image.shape[-2]}, {image.shape[-1]}] mask in [0, 1] "
                       "(the image's height and width)", describe(mask),
                       "Convert a bool or 0/1 mask with mask.float(), and give it the image's size")
        return image, mask

    def _crop_box(self, image: Tensor) -> tuple[int, int, int, int]:
        """``(top, left, height, width)``: RandomResizedCrop's draw (10 tries, then the centre crop)."""
        height, width = image.shape[-2:]
        if self.crop_scale is None:
            return 0, 0, height, width
        from torchvision.transforms import RandomResizedCrop

        return tuple(RandomResizedCrop.get_params(image, list(self.crop_scale), list(self.crop_ratio)))

    def __repr__(self) -> str:
        return (f"Augment(crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}, flip={self.flip}, "
                f"brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation}, "
                f"hue={self.hue}, grayscale={self.grayscale})")


def _crop_resize(t: Tensor, top: int, left: int, h: int, w: int, size: tuple[int, int]) -> Tensor:
    t = t[:, top:top + h, left:left + w]
    if tuple(t.shape[-2:]) == size:
        return t
    return F.interpolate(t[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)


def as_augment(spec: object, fn: str, arg: str = "augment") -> Callable[..., dict[str, Any]] | None:
    """``spec`` as an augmentation: None or ``"none"`` -> None; a :data:`PRESETS` name; a dict of
    :class:`Augment`'s settings; an :class:`Augment` (or any callable ``(item, size=None) -> item``
    that moves ``item["mask"]`` with ``item["image"]``) as it is. A torchvision transform (an
    ``nn.Module``, which would move the image without its mask), a class, or anything else is
    refused naming ``arg``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise fail(fn, arg, f"one of {list(PRESETS)}, a dict of Augment settings or an Augment",
                       repr(spec)[:100], "Pick e.g. 'domainbed' (DomainBed's augmentation) or 'none'")
        return Augment.preset(spec)
    if isinstance(spec, Mapping):
        import inspect

        defaults = {k: p.default for k, p in inspect.signature(Augment).parameters.items()}
        check_known_keys(spec, list(defaults), fn, arg, "Augment's settings")
        _settings(fn, f"{arg}.", **{**defaults, **spec})  # errors name the key: 'data.augment.hue'
        return Augment(**spec)
    if isinstance(spec, torch.nn.Module) or isinstance(spec, type):  # a torchvision transform (or a class)
        raise fail(fn, arg, "a preset name, a dict of Augment settings, an Augment instance, or a callable "
                   "(item, size=None) -> item that moves the mask with the image", describe(spec),
                   "A torchvision transform sees the image alone and would flip or crop it without its mask: use "
                   "egl.data.Augment(...) (crop, flip, jitter, greyscale), or wrap the transform in a function of "
                   "the item that applies each geometric draw to item['image'] and item['mask'] alike")
    if callable(spec):
        return spec
    raise fail(fn, arg, f"one of {list(PRESETS)}, a dict of Augment settings or an Augment", describe(spec),
               "Pass e.g. augment='domainbed' or augment=egl.data.Augment(flip=0.5)")


class Augmented(Dataset):
    """``dataset`` with ``augment`` applied to each item (for item-dict data sets that hold
    their images at the training size, e.g. the synthetic benchmark's tensors).

    Args:
        dataset: a map-style data set of dicts with ``image`` (and optionally ``mask``).
        augment: a preset name, a dict of :class:`Augment` settings, or an :class:`Augment`.

    Example:
        >>> from egl.data import Augmented, SyntheticShortcuts, SyntheticConfig
        >>> cfg = SyntheticConfig(train_per_domain=8, val_per_domain=2, test_per_split=4)
        >>> train = Augmented(SyntheticShortcuts("train", cfg, cache=False), "domainbed")
        >>> sorted(train[0]), len(train)
        (['domain', 'image', 'label', 'mask', 'shortcut'], 16)
    """

    def __init__(self, dataset: Dataset, augment: object) -> None:
        fn = "egl.data.Augmented"
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise fail(fn, "dataset", "a map-style data set (with __getitem__ and __len__)", describe(dataset),
                       "Pass e.g. egl.data.SyntheticShortcuts('train')")
        self.dataset = dataset
        self.augment = as_augment(augment, fn)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        return item if self.augment is None else self.augment(item)
