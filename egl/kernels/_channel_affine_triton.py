"""The Triton kernel of :func:`egl.kernels.channel_affine.channel_affine`. Imported only when Triton runs."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from egl.kernels._device import device_of
from egl.kernels._rows import row_tiles

__all__ = ["affine"]


@triton.jit
def affine_kernel(x_ptr, s_ptr, t_ptr, out_ptr, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
                  RELU: tl.constexpr):
    """Program ``p`` writes rows ``[p·BLOCK_R, (p+1)·BLOCK_R)`` of the ``[R, C]`` row-major view
    (``out_ptr`` may be ``x_ptr``: each element is read before it is written, by the same thread)."""
    cs = tl.arange(0, BLOCK_C)
    cm = cs < C
    s = tl.load(s_ptr + cs, mask=cm, other=0.0)
    t = tl.load(t_ptr + cs, mask=cm, other=0.0)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    m = (rows < R)[:, None] & cm[None, :]
    at = rows[:, None] * C + cs[None, :]
    v = tl.load(x_ptr + at, mask=m, other=0.0).to(tl.float32) * s[None, :] + t[None, :]
    if RELU:  # NaN stays NaN, as torch.relu keeps it (a hardware max would drop it)
        v = tl.where(v != v, v, tl.maximum(v, 0.0))
    tl.store(out_ptr + at, v.to(out_ptr.dtype.element_ty), mask=m)


def affine(x: Tensor, scale: Tensor, shift: Tensor, tile: int, relu: bool = False, inplace: bool = False) -> Tensor:
    """``x · scale + shift`` (then ReLU) for channels-last ``x`` (float32 ``[C]`` factors), in ``x``'s
    dtype and layout; written into ``x`` itself with ``inplace``."""
    rows, c, block_r, block_c = row_tiles(x, tile)
    out = x if inplace else torch.empty_like(x)  # (channels-last, as x: the same [R, C] rows)
    with device_of(x):
        affine_kernel[(triton.cdiv(rows, block_r),)](x, scale, shift, out, rows, c, BLOCK_R=block_r, BLOCK_C=block_c,
                                                      RELU=relu, num_warps=4)
    return out
