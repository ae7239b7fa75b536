"""Host-side helpers for bilinear upsampling (``align_corners=False``): the interpolation
matrices that the analytic backward multiplies by, the few output rows and columns on
which an upsampled map takes its extremes, and which output rows (columns) are the same
function of the source map (:func:`copy_classes`, for :func:`pinned`).

Source index rule, as PyTorch's ``upsample_bilinear2d``: ``s = max((o + 0.5) · n/N - 0.5, 0)``,
``i0 = min(floor(s), n - 1)``, ``i1 = min(i0 + 1, n - 1)``, weights ``1 - λ`` and ``λ = s - i0``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from egl._transfer import upload

__all__ = ["interp_matrix", "extreme_candidates", "copy_classes", "pinned", "on_device"]


def _sources(n_src: int, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    ratio = torch.tensor(n_src, dtype=torch.float32) / n_out
    s = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * ratio - 0.5).clamp_min(0.0)
    i0 = s.to(torch.int64).clamp_max(n_src - 1)
    i1 = (i0 + 1).clamp_max(n_src - 1)
    return i0, i1, s - i0.to(torch.float32)


@lru_cache(maxsize=64)
def _interp_matrix_cpu(n_src: int, n_out: int) -> Tensor:
    i0, i1, lam = _sources(n_src, n_out)
    m = torch.zeros(n_out, n_src)
    rows = torch.arange(n_out)
    m.index_put_((rows, i0), 1.0 - lam, accumulate=True)
    m.index_put_((rows, i1), lam, accumulate=True)
    return m


_DEVICE_CACHE: dict[tuple[str, int, int, str], Tensor] = {}


def on_device(table: str, n_src: int, n_out: int, device: torch.device) -> Tensor:
    """``interp_matrix`` (``table="interp"``), ``extreme_candidates`` (``"candidates"``) or
    ``copy_classes`` (``"classes"``) of one size on ``device``, uploaded once per size and device."""
    key = (table, n_src, n_out, str(device))
    if key not in _DEVICE_CACHE:
        if len(_DEVICE_CACHE) > 128:
            _DEVICE_CACHE.clear()
        make = {"interp": _interp_matrix_cpu, "candidates": extreme_candidates, "classes": copy_classes}[table]
        _DEVICE_CACHE[key] = upload(make(n_src, n_out), device)
    return _DEVICE_CACHE[key]


def interp_matrix(n_src: int, n_out: int, device: torch.device) -> Tensor:
    """``[n_out, n_src]`` float32 matrix ``U`` with ``upsample(x) = U x`` along one axis (rows sum to 1)."""
    return on_device("interp", n_src, n_out, device)


@lru_cache(maxsize=64)
def extreme_candidates(n_src: int, n_out: int) -> Tensor:
    """Output indices, along one axis, where a bilinearly upsampled map can take its min or max.

    Between two source samples the map is linear along each axis, so over the output grid it
    takes its extremes at the first or last output row (column) of each run sharing ``i0``.
    Neighbours of every run boundary are kept too, so that a device computing ``i0`` with
    different rounding (fused multiply-add) still finds the true extreme. Returns int32.
    """
    i0, _, _ = _sources(n_src, n_out)
    change = torch.nonzero(i0[1:] != i0[:-1]).flatten() + 1  # first index of each new run
    keep = {0, n_out - 1}
    for t in change.tolist():
        keep.update(range(t - 2, t + 2))
    return torch.tensor(sorted(k for k in keep if 0 <= k < n_out), dtype=torch.int32)


@lru_cache(maxsize=64)
def copy_classes(n_src: int, n_out: int) -> Tensor:
    """Output indices, along one axis, labelled so that two share a label exactly when they are
    the same function of the source: an index that copies source ``i`` (weight 1 on it,
    mathematically) is labelled ``i``, any other index ``o`` gets its own label ``n_src + o``.

    Copies are decided in integers, not from float weights: with ``a = (2o + 1)·n_src - n_out``
    (``s = a / (2 n_out)`` the unclamped source position), ``a <= 0`` copies source 0 (clamped at
    the start), ``a >= 2 n_out (n_src - 1)`` copies the last source (``i0 = i1``: weights ``1 - λ``
    and ``λ`` on one source, which float arithmetic sums to 1 only up to rounding), and
    ``a`` a multiple of ``2 n_out`` copies source ``a / (2 n_out)``. Upsampling a 2 x 2 map to
    64 x 64 makes 16 x 16 blocks of copies in each corner. Returns int32.
    """
    o = torch.arange(n_out, dtype=torch.int64)
    a = (2 * o + 1) * n_src - n_out
    label = torch.where(a % (2 * n_out) == 0, a // (2 * n_out), n_src + o)
    label = torch.where(a <= 0, torch.zeros_like(label), label)
    label = torch.where(a >= 2 * n_out * (n_src - 1), torch.full_like(label, n_src - 1), label)
    return label.to(torch.int32)


def pinned(at: Tensor, shape: tuple[int, int, int], src_hw: tuple[int, int]) -> Tensor:
    """``[B, C·H·W]`` bool: the outputs of a bilinear upsampling of ``[B, C, h, w]`` maps (``src_hw``)
    to ``[B, C, H, W]`` (``shape``) that are the same function of the source maps as output ``at[b]``
    (flat indices ``[B]``): its channel, its row's copy class and its column's (:func:`copy_classes`).

    Where ``at`` holds a sample's maximum (or minimum), these outputs hold it too, whatever the
    source values: after min-max normalisation they are 1 (or 0) identically, so their derivative is
    zero. Autograd would instead route each one's gradient to its source pixel and, with the opposite
    sign, through the maximum to the same pixel, where the two cancel: exactly in exact arithmetic,
    to rounding in float32, and a loss such as BCE (gradient ``1/eps`` at a map's 0 and 1) makes
    those gradients large (``explainers.md``, "Precision").
    """
    c, hh, ww = shape
    h, w = src_hw
    dev = at.device
    cy, cx = on_device("classes", h, hh, dev), on_device("classes", w, ww, dev)
    at = at.long()
    ch, y, x = at // (hh * ww), (at // ww) % hh, at % ww
    same_c = torch.arange(c, device=dev).view(1, c, 1, 1) == ch.view(-1, 1, 1, 1)
    same_y = cy.view(1, 1, hh, 1) == cy[y].view(-1, 1, 1, 1)
    same_x = cx.view(1, 1, 1, ww) == cx[x].view(-1, 1, 1, 1)
    return (same_c & same_y & same_x).flatten(1)
