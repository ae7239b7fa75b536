"""The Triton kernel of :func:`egl.kernels.bn_stats.bn_stats`. Imported only when Triton runs."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from egl.kernels._device import device_of
from egl.kernels._rows import bands, row_tiles

__all__ = ["partial_sums"]


@triton.jit
def bn_stats_kernel(x_ptr, k_ptr, part_ptr, R, C, ROWS, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program ``p`` sums ``x - k`` and ``(x - k)²`` over rows ``[p·ROWS, (p+1)·ROWS)`` of the
    ``[R, C]`` row-major view; writes ``part[p, 0, :]`` and ``part[p, 1, :]`` (float32)."""
    p = tl.program_id(0)
    cs = tl.arange(0, BLOCK_C)
    cm = cs < C
    k = tl.load(k_ptr + cs, mask=cm, other=0.0)
    s = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    q = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    r0 = p.to(tl.int64) * ROWS
    r1 = tl.minimum(r0 + ROWS, R)
    for r in range(r0, r1, BLOCK_R):
        rows = r + tl.arange(0, BLOCK_R)
        m = (rows < r1)[:, None] & cm[None, :]
        v = tl.load(x_ptr + rows[:, None] * C + cs[None, :], mask=m, other=0.0).to(tl.float32)
        v = tl.where(m, v - k[None, :], 0.0)
        s += v
        q += v * v
    tl.store(part_ptr + (p * 2) * C + cs, tl.sum(s, axis=0), mask=cm)
    tl.store(part_ptr + (p * 2 + 1) * C + cs, tl.sum(q, axis=0), mask=cm)


def partial_sums(x: Tensor, tile: int) -> tuple[Tensor, Tensor]:
    """``([P, 2, C] float32 partial sums, [C] float32 shift)`` for channels-last ``x``."""
    rows, c, block_r, block_c = row_tiles(x, tile)
    shift = x[0, :, 0, 0].float().contiguous()  # the first row of the [R, C] view
    n_prog, per = bands(x, rows, block_r)
    parts = torch.empty(n_prog, 2, c, device=x.device, dtype=torch.float32)
    with device_of(x):
        bn_stats_kernel[(n_prog,)](x, shift, parts, rows, c, per, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    return parts, shift
