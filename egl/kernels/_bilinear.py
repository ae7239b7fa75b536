"""Host-side helpers for bilinear upsampling (``align_corners=False``): the interpolation
matrices that the analytic backward multiplies by, and the few output rows and columns on
which an upsampled map takes its extremes.

Source index rule, as PyTorch's ``upsample_bilinear2d``: ``s = max((o + 0.5) · n/N - 0.5, 0)``,
``i0 = min(floor(s), n - 1)``, ``i1 = min(i0 + 1, n - 1)``, weights ``1 - λ`` and ``λ = s - i0``.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from egl._transfer import upload

__all__ = ["interp_matrix", "extreme_candidates", "on_device"]


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
    """``interp_matrix`` (``table="interp"``) or ``extreme_candidates`` (``"candidates"``) of one
    size on ``device``, uploaded once per size and device."""
    key = (table, n_src, n_out, str(device))
    if key not in _DEVICE_CACHE:
        if len(_DEVICE_CACHE) > 128:
            _DEVICE_CACHE.clear()
        make = _interp_matrix_cpu if table == "interp" else extreme_candidates
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
