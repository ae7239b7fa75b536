"""The Triton kernels of :func:`egl.kernels.bn_backward.bn_backward`. Imported only when Triton runs."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from egl.kernels._device import device_of
from egl.kernels._rows import bands, row_tiles

__all__ = ["partial_sums", "input_grad"]


@triton.jit
def sums_kernel(g_ptr, x_ptr, mu_ptr, part_ptr, R, C, ROWS, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program ``p`` sums ``g`` and ``g · (x - μ)`` over rows ``[p·ROWS, (p+1)·ROWS)`` of the
    ``[R, C]`` row-major views; writes ``part[p, 0, :]`` and ``part[p, 1, :]`` (float32)."""
    p = tl.program_id(0)
    cs = tl.arange(0, BLOCK_C)
    cm = cs < C
    mu = tl.load(mu_ptr + cs, mask=cm, other=0.0)
    s = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    q = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
    r0 = p.to(tl.int64) * ROWS
    r1 = tl.minimum(r0 + ROWS, R)
    for r in range(r0, r1, BLOCK_R):
        rows = r + tl.arange(0, BLOCK_R)
        m = (rows < r1)[:, None] & cm[None, :]
        at = rows[:, None] * C + cs[None, :]
        g = tl.load(g_ptr + at, mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + at, mask=m, other=0.0).to(tl.float32)
        s += g
        q += g * tl.where(m, x - mu[None, :], 0.0)
    tl.store(part_ptr + (p * 2) * C + cs, tl.sum(s, axis=0), mask=cm)
    tl.store(part_ptr + (p * 2 + 1) * C + cs, tl.sum(q, axis=0), mask=cm)


@triton.jit
def grad_kernel(g_ptr, x_ptr, a_ptr, b_ptr, mu_ptr, c_ptr, out_ptr, R, C, BLOCK_R: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """``out = a·g + b·(x - μ) + c`` per channel, rows ``[p·BLOCK_R, (p+1)·BLOCK_R)``."""
    cs = tl.arange(0, BLOCK_C)
    cm = cs < C
    a = tl.load(a_ptr + cs, mask=cm, other=0.0)
    b = tl.load(b_ptr + cs, mask=cm, other=0.0)
    mu = tl.load(mu_ptr + cs, mask=cm, other=0.0)
    c = tl.load(c_ptr + cs, mask=cm, other=0.0)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = (rows < R)[:, None] & cm[None, :]
    at = rows[:, None] * C + cs[None, :]
    g = tl.load(g_ptr + at, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + at, mask=m, other=0.0).to(tl.float32)
    out = a[None, :] * g + b[None, :] * (x - mu[None, :]) + c[None, :]
    tl.store(out_ptr + at, out.to(out_ptr.dtype.element_ty), mask=m)


def partial_sums(g: Tensor, x: Tensor, mean: Tensor, tile: int) -> Tensor:
    """``[P, 2, C]`` float32 partial sums of ``g`` and ``g · (x - mean)`` (channels-last maps)."""
    rows, c, block_r, block_c = row_tiles(x, tile)
    n_prog, per = bands(x, rows, block_r)
    parts = torch.empty(n_prog, 2, c, device=x.device, dtype=torch.float32)
    with device_of(x):
        sums_kernel[(n_prog,)](g, x, mean, parts, rows, c, per, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4)
    return parts


def input_grad(g: Tensor, x: Tensor, a: Tensor, b: Tensor, mean: Tensor, c0: Tensor, tile: int) -> Tensor:
    """``a·g + b·(x - mean) + c0`` per channel (float32 ``[C]`` factors), in ``x``'s dtype and layout."""
    rows, c, block_r, block_c = row_tiles(x, tile)
    out = torch.empty_like(x)
    with device_of(x):
        grad_kernel[(triton.cdiv(rows, block_r),)](g, x, a, b, mean, c0, out, rows, c, BLOCK_R=block_r,
                                                   BLOCK_C=block_c, num_warps=4)
    return out
