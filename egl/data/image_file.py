"""Read an image file as integer levels and their full scale, without clipping.

PIL's ``convert("RGB")`` clips 16-bit grey images (``I;16``, ``I``) to 255: a full-range
16-bit ramp came back 99% white. Here 16-bit files keep their levels (full scale 65535) and
8-bit ones theirs (255), so ``levels / full_scale`` is the image in [0, 1] either way.

Both readers turn a JPEG (or TIFF) by its EXIF orientation tag first, as image viewers show
it: a mask drawn on the image as displayed lines up with it (without the turn a phone photo
taken upright is read sideways, and its mask with it misses the object).

Masks (:func:`read_mask_levels`) are read for their *meaning*, not their colours: a palette
(``P``) file gives its indices (VOC-style 0/1 masks: index 1 is dark red, read as a colour it
was half strength), and a file whose colour channels are constant but whose alpha varies (a
cut-out, an ``LA`` mask) gives its alpha channel (read as colours it was empty or full).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from egl._check import fail

__all__ = ["read_levels", "read_mask_levels", "upright_size"]

_WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_levels(path: str | os.PathLike[str], mode: str, fn: str, arg: str) -> tuple[Tensor, int]:
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
            im = _upright(opened)
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
    """``(levels [1, H, W] int32, full_scale, how)`` of a mask file, upright (EXIF).

    ``how`` says what was read: ``"index"`` (a palette file's indices, full scale 255),
    ``"alpha"`` (the alpha channel of a file whose colours are constant), ``"grey"`` (16-bit
    grey levels, full scale 65535) or ``"colour"`` (the brightest of the RGB channels: a red
    object on black is foreground).
    """
    from PIL import Image

    try:
        with Image.open(path) as opened:
            im = _upright(opened)
            if im.mode == "P" and "transparency" not in im.info:
                return _as_mask(np.asarray(im, dtype=np.int64)), 255, "index"
            if im.mode in ("LA", "RGBA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = np.asarray(im.convert("RGBA"), dtype=np.int64)
                colour, alpha = rgba[..., :3], rgba[..., 3]
                if colour.min() == colour.max() and alpha.min() != alpha.max():
                    return _as_mask(alpha), 255, "alpha"
    except Exception as exc:  # noqa: BLE001 - any decoder failure: name the file
        raise fail(fn, arg, "readable image files", f"'{path}' ({type(exc).__name__}: {exc})",
                   "Check the path and the file, or remove it") from exc
    levels, full = read_levels(path, "RGB", fn, arg)
    return levels.amax(0, keepdim=True), full, "grey" if full == 65535 else "colour"


def _as_mask(levels: np.ndarray) -> Tensor:
    return torch.from_numpy(levels.astype(np.int32)).unsqueeze(0)


def upright_size(im: Any) -> tuple[int, int]:
    """``(width, height)`` of an open image as :func:`read_levels` reads it (turned by EXIF),
    from its header only."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - unreadable EXIF: as stored
        orientation = 1
    w, h = im.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
