"""Read an image file as integer levels and their full scale, without clipping.

PIL's ``convert("RGB")`` clips 16-bit grey images (``I;16``, ``I``) to 255: a full-range
16-bit ramp came back 99% white. Here 16-bit files keep their levels (full scale 65535) and
8-bit ones theirs (255), so ``levels / full_scale`` is the image in [0, 1] either way.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import Tensor

from egl._check import fail

__all__ = ["read_levels"]

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
        with Image.open(path) as im:
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
