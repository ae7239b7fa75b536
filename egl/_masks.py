"""Mask handling shared by losses, regularizers and maskers: validation and resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from egl._check import check_range, check_shape, check_size, check_tensor, describe, fail

__all__ = ["as_mask", "resize_mask", "MASK_SHAPE"]

MASK_SHAPE = "B 1 H W"


def as_mask(mask: object, fn: str, arg: str = "mask", *, check_values: bool = True) -> Tensor:
    """``[B, H, W]`` or ``[B, 1, H, W]`` bool/int/float mask to a float ``[B, 1, H, W]`` in [0, 1].

    Raises:
        InputError: wrong rank, several channels, or values outside [0, 1].
    """
    m = check_tensor(mask, fn, arg)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if m.dim() != 4 or m.shape[1] != 1:
        if mask.dim() == 2:  # type: ignore[union-attr]
            fix = f"Add the batch dimension: {arg}[None] for one image's mask"
        elif mask.dim() == 4 and mask.shape[-1] == 1:  # type: ignore[union-attr]
            fix = f"Put the channel second: {arg}.permute(0, 3, 1, 2), or {arg}.squeeze(-1)"
        elif mask.dim() == 4:  # type: ignore[union-attr]
            fix = f"Keep one channel, e.g. {arg}[:, :1], or {arg}.amax(1, keepdim=True) for one mask per class"
        else:
            fix = "Pass one mask per image, [B, H, W] or [B, 1, H, W]"
        raise fail(fn, arg, "a mask of shape [B, H, W] or [B, 1, H, W]", describe(mask), fix)
    if m.dtype == torch.bool or not m.is_floating_point():
        m = m.float()
    if check_values:
        check_range(m.detach(), 0.0, 1.0, fn, arg,
                    f"Masks are soft foreground probabilities: scale '{arg}' into [0, 1]")
    return m


def check_aspect(src: tuple[int, int], dst: tuple[int, int], fn: str, arg: str, dst_name: str) -> None:
    """Refuse resizing an ``src``-sized map to ``dst`` when it is a scaled copy of ``dst``
    *transposed* and not of ``dst`` (a mask ``[B, 1, W, H]`` of ``[B, C, H, W]`` images), to within
    one cell of the coarser grid (the rounding of feature grids: 7x7 for 224x200 images at stride
    32). Other proportions are resized as they are (images squashed to a square beside masks kept
    at the photo's size), and so are grids with a side under 8 cells, where one cell of rounding
    makes the orientation ambiguous (a 2x2 Grad-CAM map of 48x64 images)."""
    def fits(a: tuple[int, int], b: tuple[int, int]) -> bool:  # some s with |b - s a| <= 1 on both sides
        return max((b[0] - 1) / a[0], (b[1] - 1) / a[1]) <= min((b[0] + 1) / a[0], (b[1] + 1) / a[1])

    def scaled(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return fits(a, b) or fits(b, a)

    src, dst = (int(src[0]), int(src[1])), (int(dst[0]), int(dst[1]))
    if min(*src, *dst) >= 8 and src != dst and not scaled(src, dst) and scaled((src[1], src[0]), dst):
        raise fail(fn, arg, f"a map oriented as {dst_name} {list(dst)} (height, width; any scale)",
                   f"size {list(src)}, their transpose", "Transpose it back (mask.transpose(-2, -1)): masks "
                   "are [B, 1, H, W] with H the images' height")


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize ``[B, 1, H, W]`` masks to ``size``.

    Rule: shrinking in both dimensions uses area averaging (each cell becomes the
    fraction of its pixels that are foreground, exact for integer factors); growing in both
    uses bilinear interpolation with ``align_corners=False``; shrinking one side while growing
    the other uses antialiased bilinear interpolation (computed in float32 at least), so thin
    structures along the shrinking side are averaged, not dropped or doubled by where they fall
    (plain bilinear turned a 25%-foreground mask of thin bands into 0 or 1). Values stay in [0, 1].

    Args:
        mask: float masks in [0, 1] (:func:`as_mask` turns bool or integer masks into these).
        size: the output ``(H, W)``, both >= 1, e.g. ``x.shape[-2:]`` (a pair, like every size
            argument in egl; a single int is refused rather than guessed to mean a square).

    Shape:
        mask: ``B 1 H W``; returns ``B 1 size[0] size[1]``, of ``mask``'s dtype.

    Raises:
        InputError: ``mask`` is not a floating ``[B, 1, H, W]`` tensor, or ``size`` is not a pair
            of ints >= 1. (Any proportions are resized: the public functions refuse a transposed
            mask first, :func:`check_aspect`.)
    """
    fn = "egl._masks.resize_mask"
    if isinstance(mask, Tensor) and not mask.is_floating_point():
        raise fail(fn, "mask", "a floating-point mask in [0, 1]", describe(mask),
                   "Convert it with egl._masks.as_mask (bool or 0/1 masks), or mask.float() / 255 (0-255 masks)")
    check_shape(mask, MASK_SHAPE, fn, "mask")
    size = check_size(size, fn)
    if tuple(mask.shape[-2:]) == size:
        return mask
    if size[0] <= mask.shape[-2] and size[1] <= mask.shape[-1]:
        return F.adaptive_avg_pool2d(mask, size)
    if size[0] < mask.shape[-2] or size[1] < mask.shape[-1]:  # one side shrinks: antialias it
        wide = mask.to(dtype=torch.promote_types(mask.dtype, torch.float32))  # no 16-bit antialias kernel
        out = F.interpolate(wide, size=size, mode="bilinear", align_corners=False, antialias=True)
        return out.clamp_(0.0, 1.0).to(dtype=mask.dtype)
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
