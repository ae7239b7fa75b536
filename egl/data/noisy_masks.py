"""Masks degraded the way cheap annotations are: boxes, loose or tight outlines, offsets.

Explanation supervision is only as good as its masks, and real masks are rarely exact: bounding
boxes are far cheaper to draw than outlines, annotators trace loosely or tightly, and masks made
at another resolution or by another pipeline sit a few pixels off. RES (Gao et al., NeurIPS
2022) makes robustness to such inaccurate annotations the point of its method. ``NoisyMasks``
wraps a data set whose items carry ``mask`` and degrades each mask, so that a method's
sensitivity to annotation quality can be measured on data whose exact masks are known:

1. ``box=True``: the mask becomes the bounding box of its foreground (``mask >= 0.5``); an
   empty mask stays empty. (One box round all of the foreground: several objects give one box.)
2. ``dilate=k``: grown by ``k`` pixels (a grey dilation with a ``2k + 1`` square: the maximum over
   the square; soft masks stay soft).
3. ``erode=k``: shrunk by ``k`` pixels (the minimum over the square; pixels outside the image
   count as background, so a mask touching the border shrinks from it too).
4. ``shift=k``: moved by a whole-pixel offset drawn uniformly in ``[-k, k]`` on each axis, per
   item; the uncovered strip is background. The offset depends on ``seed`` and the item's index
   only, so every epoch, worker and training seed sees the same degraded mask (annotation noise
   is a property of the annotation, not of the step).

The steps run in that order. Items without a ``mask``, or marked ``annotated=False`` (placeholder
masks of :class:`~egl.data.PartialMasks`), pass through unchanged. Wrap the data before
augmentation (``egl.data.Augmented``), so that the augmentation moves the degraded mask with the
image, as it would a real annotation; in experiments, ``data.mask_noise`` does this for the
training sets (test sets keep their exact masks, so localisation is scored against the truth).
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from egl._check import check_flag, describe, fail
from egl.data._wrapping import check_data_seed, map_style_length

__all__ = ["NoisyMasks", "degrade_mask", "as_mask_noise", "NOISE_KEYS"]

_FN = "egl.data.NoisyMasks"
NOISE_KEYS = ("box", "dilate", "erode", "shift", "seed")


def _pixels(value: object, fn: str, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise fail(fn, arg, "a whole number of pixels >= 0 (0: off)", repr(value)[:100], f"Pass e.g. {arg}=4")
    return int(value)


def _box(m: Tensor) -> Tensor:
    fg = (m >= 0.5).reshape(-1, *m.shape[-2:]).any(0)  # [H, W]: foreground in any leading channel
    out = torch.zeros_like(m)
    r, c = torch.nonzero(fg.any(1)).flatten(), torch.nonzero(fg.any(0)).flatten()
    if r.numel():
        out[..., int(r[0]):int(r[-1]) + 1, int(c[0]):int(c[-1]) + 1] = 1
    return out


def _grow(m: Tensor, k: int) -> Tensor:
    """Grey dilation by a ``2k + 1`` square; outside the image is background (0)."""
    flat = m.reshape(-1, 1, *m.shape[-2:]).float()
    padded = F.pad(flat, (k, k, k, k), value=0.0)
    return F.max_pool2d(padded, 2 * k + 1, stride=1).reshape(m.shape).to(m.dtype)


def _shrink(m: Tensor, k: int) -> Tensor:
    """Grey erosion by a ``2k + 1`` square; outside the image is background (0)."""
    flat = m.reshape(-1, 1, *m.shape[-2:]).float()
    padded = F.pad(-flat, (k, k, k, k), value=0.0)  # (background: -0 is the largest)
    return (0.0 - F.max_pool2d(padded, 2 * k + 1, stride=1)).reshape(m.shape).to(m.dtype)  # (0 - -0: no -0)


def _move(m: Tensor, dy: int, dx: int) -> Tensor:
    out = torch.zeros_like(m)
    h, w = m.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = slice(max(-dy, 0), h - max(dy, 0)), slice(max(dy, 0), h - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), w - max(dx, 0)), slice(max(dx, 0), w - max(-dx, 0))
    out[..., dst_y, dst_x] = m[..., src_y, src_x]
    return out


def degrade_mask(mask: Tensor, *, box: bool = False, dilate: int = 0, erode: int = 0,
                 offset: tuple[int, int] = (0, 0)) -> Tensor:
    """One mask ``[..., H, W]`` degraded by the steps of the module docstring, with a given offset
    ``(dy, dx)`` in pixels for the shift (positive: down and right).

    Args:
        mask: a floating mask ``[..., H, W]`` (values in [0, 1]).
        box: replace it by the bounding box of its foreground.
        dilate: pixels to grow it by.
        erode: pixels to shrink it by.
        offset: ``(dy, dx)``, whole pixels.

    Returns:
        The degraded mask, of ``mask``'s shape and dtype.

    Raises:
        InputError: ``mask`` not a floating tensor of at least two dimensions, or a bad setting.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 6, 6); m[0, 2, 2] = 1; m[0, 3, 4] = 1
        >>> degrade_mask(m, box=True)[0].int().tolist()[1:5]
        [[0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]]
    """
    fn = "egl.data.degrade_mask"
    if not isinstance(mask, Tensor) or mask.dim() < 2 or not mask.is_floating_point():
        raise fail(fn, "mask", "a floating tensor [..., H, W]", describe(mask), "Pass the mask as mask.float()")
    box = check_flag(box, fn, "box")
    dilate, erode = _pixels(dilate, fn, "dilate"), _pixels(erode, fn, "erode")
    if (not isinstance(offset, tuple) or len(offset) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in offset)):
        raise fail(fn, "offset", "a pair of whole pixel offsets (dy, dx)", repr(offset)[:100],
                   "Pass e.g. offset=(2, -1)")
    m = mask
    if box:
        m = _box(m)
    if dilate:
        m = _grow(m, dilate)
    if erode:
        m = _shrink(m, erode)
    if offset != (0, 0):
        m = _move(m, int(offset[0]), int(offset[1]))
    return m


def as_mask_noise(spec: object, fn: str, arg: str = "mask_noise") -> dict[str, Any] | None:
    """A ``{box, dilate, erode, shift, seed}`` mapping (each optional) checked as :class:`NoisyMasks`'
    arguments; None for None or an empty mapping (no noise).

    Args:
        spec: the mapping (a config's ``data.mask_noise``).
        fn: the function named in errors.
        arg: the argument named in errors (keys as ``<arg>.<key>``).

    Raises:
        InputError: not a mapping, an unknown key (with the closest known one), or a bad value."""
    import difflib

    if spec is None or spec == {}:
        return None
    if not isinstance(spec, dict):
        raise fail(fn, arg, f"null or a mapping of {list(NOISE_KEYS)}", repr(spec)[:100],
                   f"Set e.g. {arg}={{box: true}} or {arg}={{dilate: 4}}")
    for key in spec:
        if key not in NOISE_KEYS:
            close = difflib.get_close_matches(str(key), NOISE_KEYS, n=1)
            hint = f" Did you mean '{arg}.{close[0]}'?" if close else ""
            raise fail(fn, f"{arg}.{key}", f"one of NoisyMasks' settings {list(NOISE_KEYS)}",
                       f"the unknown key {key!r}.{hint}", f"Use one of {list(NOISE_KEYS)}")
    check_flag(spec.get("box", False), fn, f"{arg}.box")
    for key in ("dilate", "erode", "shift"):
        _pixels(spec.get(key, 0), fn, f"{arg}.{key}")
    check_data_seed(spec.get("seed", 0), fn, f"{arg}.seed")
    return dict(spec)


class NoisyMasks(Dataset):
    """``dataset`` with every item's mask degraded (see the module docstring).

    Args:
        dataset: a map-style data set of dict items with ``mask``.
        box: replace each mask by the bounding box of its foreground.
        dilate: pixels to grow each mask by (0: off).
        erode: pixels to shrink each mask by (0: off).
        shift: largest offset in pixels on each axis (0: off).
        seed: seed of the offsets (item ``i``'s offset is drawn from ``seed`` and ``i``).

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 8, 8); m[0, 3:5, 3:5] = 1
        >>> data = [{"image": torch.rand(3, 8, 8), "label": torch.tensor(0), "mask": m}]
        >>> float(NoisyMasks(data, dilate=1)[0]["mask"].sum()), float(NoisyMasks(data, erode=1)[0]["mask"].sum())
        (16.0, 0.0)
    """

    def __init__(self, dataset: Any, *, box: bool = False, dilate: int = 0, erode: int = 0, shift: int = 0,
                 seed: int = 0) -> None:
        self.box = check_flag(box, _FN, "box")
        self.dilate = _pixels(dilate, _FN, "dilate")
        self.erode = _pixels(erode, _FN, "erode")
        self.shift = _pixels(shift, _FN, "shift")
        self.seed = check_data_seed(seed, _FN)
        map_style_length(dataset, _FN)
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def offset(self, i: int) -> tuple[int, int]:
        """Item ``i``'s offset ``(dy, dx)`` (``(0, 0)`` with ``shift=0``)."""
        if not self.shift:
            return (0, 0)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + i) % 2**63)
        dy, dx = torch.randint(-self.shift, self.shift + 1, (2,), generator=g).tolist()
        return (dy, dx)

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        if not isinstance(item, dict) or "mask" not in item or not bool(item.get("annotated", True)):
            return item
        mask = item["mask"]
        if not isinstance(mask, Tensor):
            raise fail(_FN, "dataset", "items whose 'mask' is a tensor", f"a mask {describe(mask)}",
                       "Return masks as tensors [1, H, W] or [H, W]")
        if mask.numel():
            lo, hi = (float(v) for v in torch.aminmax(mask.float()))
            if lo < 0 or hi > 1:
                raise fail(_FN, "dataset", "masks with values in [0, 1]", f"item {i}'s mask in [{lo:g}, {hi:g}]",
                           "Scale the masks to [0, 1] (e.g. mask / 255 for 8-bit images)")
        j = operator.index(i)
        j = j % len(self) if j < 0 else j
        degraded = degrade_mask(mask.float(), box=self.box, dilate=self.dilate, erode=self.erode,
                                offset=self.offset(j))
        if mask.dtype == torch.bool:
            degraded = degraded >= 0.5
        elif not mask.is_floating_point():  # (0/1 integer masks stay 0/1 integers)
            degraded = degraded.round().to(mask.dtype)
        else:
            degraded = degraded.to(mask.dtype)
        return {**item, "mask": degraded}

    def __repr__(self) -> str:
        return (f"NoisyMasks(box={self.box}, dilate={self.dilate}, erode={self.erode}, shift={self.shift}, "
                f"seed={self.seed})")
