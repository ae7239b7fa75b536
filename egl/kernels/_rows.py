"""Launch geometry of the kernels that read a channels-last map as ``[N·H·W, C]`` rows
(:mod:`egl.kernels.bn_stats`, :mod:`egl.kernels.channel_affine`, :mod:`egl.kernels.bn_backward`)."""

from __future__ import annotations

import torch
import triton
from torch import Tensor

__all__ = ["row_tiles", "bands"]


def row_tiles(x: Tensor, tile: int) -> tuple[int, int, int, int]:
    """``(rows, C, block_r, block_c)`` for channels-last ``x [N, C, H, W]``: a tile of
    ``block_r`` rows by the padded channel count holds about ``tile`` elements."""
    n, c, h, w = x.shape
    block_c = triton.next_power_of_2(c)
    return n * h * w, c, max(1, tile // block_c), block_c


def bands(x: Tensor, rows: int, block_r: int) -> tuple[int, int]:
    """``(programs, rows per program)`` for a reduction over ``rows``: whole tiles per program,
    about 8 programs per multiprocessor on CUDA (4 under the interpreter)."""
    target = 8 * torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    n_prog = max(1, min(target, triton.cdiv(rows, block_r)))
    per = triton.cdiv(triton.cdiv(rows, n_prog), block_r) * block_r
    return triton.cdiv(rows, per), per
