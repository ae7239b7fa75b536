"""Checks and pixel ranking shared by the metric families (private)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from egl._check import check_finite, check_same_batch, check_shape, check_tensor, describe, fail
from egl._transfer import upload

__all__ = ["check_logits", "check_labels", "pixel_ranks", "num_top_pixels", "resize_map"]


def check_logits(logits: object, fn: str, arg: str = "logits") -> Tensor:
    """``[B, C]`` finite floating scores with at least one sample and one class."""
    t = check_shape(logits, "B C", fn, arg)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise fail(fn, arg, "at least one sample and one class", describe(t),
                   f"Pass a non-empty [B, C] '{arg}'")
    return check_finite(t.detach(), fn, arg)


def check_labels(y: object, batch: Tensor, num_classes: int, fn: str, arg: str,
                 *, batch_arg: str = "logits") -> Tensor:
    """1-D integer labels, one per row of ``batch``, each in ``[0, num_classes)``."""
    t = check_tensor(y, fn, arg)
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise fail(fn, arg, "a 1-D integer tensor of class indices [B]", describe(t),
                   f"Pass class indices, e.g. {arg}.long() or {arg}.argmax(1) for one-hot labels")
    check_same_batch(fn, **{batch_arg: batch, arg: t})
    if t.numel():
        lo, hi = torch.stack([t.min(), t.max()]).tolist()  # one read of the device, not two
        if lo < 0 or hi >= num_classes:
            raise fail(fn, arg, f"class indices in [0, {num_classes - 1}]", f"values in [{lo}, {hi}]",
                       f"'{batch_arg}' has {num_classes} classes: relabel '{arg}' or fix the head")
    return upload(t, batch.device, torch.long)  # one_hot and gather take int64 indices


def pixel_ranks(scores: Tensor) -> Tensor:
    """Rank of every pixel within its row, 0 = most salient: ``[B, N]`` -> ``[B, N]`` int64.

    Ties are broken deterministically by raster order (the earlier pixel ranks first):
    a stable descending sort.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    arange = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return ranks.scatter_(1, order, arange)


def num_top_pixels(k: float, num_pixels: int) -> int:
    """``round(k / 100 * num_pixels)`` rounding halves up: ``floor(k * N / 100 + 0.5)``."""
    return int(math.floor(k * num_pixels / 100.0 + 0.5))


def resize_map(s: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a non-negative ``[B, 1, h, w]`` map: area averaging when shrinking in both
    dimensions, bilinear (``align_corners=False``) otherwise; no clamping."""
    if tuple(s.shape[-2:]) == tuple(size):
        return s
    if size[0] <= s.shape[-2] and size[1] <= s.shape[-1]:
        return F.adaptive_avg_pool2d(s, size)
    return F.interpolate(s, size=size, mode="bilinear", align_corners=False)
