"""Read an image file as integer levels and their full scale, without clipping.

PIL's ``convert("RGB")`` clips 16-bit grey images (``I;16``, ``I``) to 255: a full-range
16-bit ramp came back 99% white. Here 16-bit files keep their levels (full scale 65535) and
8-bit ones theirs (255), so ``levels / full_scale`` is the image in [0, 1] either way.

Pixels are read as stored, as PIL and DomainBed read them (an EXIF orientation tag is not
applied); ``read_levels(..., upright=True)`` turns the image by its tag, as image viewers show
it, for an image whose mask was drawn on it as displayed (:class:`egl.data.image_items.ImageItems`
decides by the mask's size).

Masks (:func:`read_mask_levels`) are read for their *meaning*, not their colours: a palette
(``P``) file whose entry 0 is black and whose pixels use indices 0 and 1 only gives its indices
(VOC-style 0/1 masks: index 1 is dark red, read as a colour it was half strength; any other
palette is read by its colours, as an optimiser may order it arbitrarily), and a file whose
alpha varies gives its alpha channel (a cut-out, an ``LA`` mask: read as colours it was empty,
full or the photo's brightness).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from egl._check import fail

__all__ = ["read_levels", "read_mask_levels", "upright_fits"]

_WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_levels(path: str | os.PathLike[str], mode: str, fn: str, arg: str, *,
                upright: bool = False) -> tuple[Tensor, int]:
    """``(levels [C, H, W] int32, full_scale)`` of the file; ``mode`` is ``"RGB"`` (C = 3) or ``"L"``.

    8-bit files (and palette, RGBA, CMYK...) go through PIL's conversion to ``mode``; 16-bit grey
    files keep their 0-65535 levels (repeated over three channels for ``"RGB"``). Float images
    are refused (their range is unknown), as are unreadable files, naming the path.
    """
    from PIL import Image

    levels: np.ndarray | None = None
    full = 255
    try:
        with Image.open(path) as opened:
            im = _upright(opened) if upright else opened
            if im.mode in _WIDE:
                levels, full = np.asarray(im, dtype=np.int64), 65535
            elif im.mode != "F":
                levels = np.asarray(im.convert(mode), dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - any decoder failure: name the file
        raise fail(fn, arg, "readable image files", f"'{path}' ({type(exc).__name__}: {exc})",
                   "Check the path and the file, or remove it") from exc
    if levels is None:
        raise fail(fn, arg, "8- or 16-bit images", f"'{path}', a 32-bit float image (its range is unknown)",
                   "Save it as an 8- or 16-bit PNG")
    if levels.min(initial=0) < 0 or levels.max(initial=0) > full:
        raise fail(fn, arg, f"levels in [0, {full}]", f"'{path}' with levels in [{levels.min()}, {levels.max()}]",
                   "Save it as an 8- or 16-bit image")
    t = torch.from_numpy(levels.astype(np.int32))
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
    if mode == "RGB" and t.shape[0] == 1:
        t = t.expand(3, -1, -1).contiguous()
    return t, full


def _upright(im: Any) -> Any:
    """``im`` turned by its EXIF orientation tag (itself when it has none)."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: the pixels as stored
        return im
    return ImageOps.exif_transpose(im) if orientation not in (None, 1) else im


def read_mask_levels(path: str | os.PathLike[str], fn: str, arg: str) -> tuple[Tensor, int, str]:
    """``(levels [1, H, W] int32, full_scale, how)`` of a mask file, as stored (no EXIF turn).

    ``how`` says what was read: ``"index"`` (a 0/1 palette file's indices, entry 0 black),
    ``"alpha"`` (the alpha channel, where it varies), ``"grey"`` (16-bit grey levels, full scale
    65535) or ``"colour"`` (the brightest of the RGB channels: a red object on black is
    foreground; any other palette file by its colours, ``"labels"`` where it uses more than two
    indices: a class-label image, which the caller warns about).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode == "P" and "transparency" not in im.info:
                index = np.asarray(im, dtype=np.int64)
                palette = im.getpalette() or []
                if index.max(initial=0) <= 1 and palette[:3] == [0, 0, 0]:
                    return _as_mask(index), 255, "index"
                if len(np.unique(index)) > 2:  # (VOC's class masks: 0 background, 1-20 classes, 255 void)
                    levels, full = read_levels(path, "RGB", fn, arg)
                    return levels.amax(0, keepdim=True), full, "labels"
            if im.mode in ("LA", "RGBA", "PA") or (im.mode == "P" and "transparency" in im.info):
                alpha = np.asarray(im.convert("RGBA"), dtype=np.int64)[..., 3]
                if alpha.min() != alpha.max():
                    return _as_mask(alpha), 255, "alpha"
    except Exception as exc:  # noqa: BLE001 - any decoder failure: name the file
        raise fail(fn, arg, "readable image files", f"'{path}' ({type(exc).__name__}: {exc})",
                   "Check the path and the file, or remove it") from exc
    levels, full = read_levels(path, "RGB", fn, arg)
    return levels.amax(0, keepdim=True), full, "grey" if full == 65535 else "colour"


def _as_mask(levels: np.ndarray) -> Tensor:
    return torch.from_numpy(levels.astype(np.int32)).unsqueeze(0)


def upright_fits(path: str | os.PathLike[str], size: tuple[int, int]) -> bool:
    """Whether the image at ``path`` has an EXIF orientation that turns it by 90 degrees and
    ``size`` (``(H, W)``) is its turned size, not its stored one: its mask was drawn on the image
    as viewers show it. (A 180-degree turn or a mirror keeps the size: read as stored.)"""
    from PIL import Image

    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)
            w, h = im.size
    except Exception:  # noqa: BLE001 - unreadable: the caller's read names it
        return False
    return orientation in (5, 6, 7, 8) and (w, h) == (int(size[0]), int(size[1])) and w != h
