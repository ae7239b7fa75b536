"""The fused Grad-CAM epilogue's forward in one launch: one program per sample.

:mod:`egl.kernels._cam_triton` runs three launches one after another (channel sum, stats, write),
so their times add, and the device idles between them. Here program ``b`` does all three for
sample ``b``: the grouped channel sum over all its channels (:func:`_cam_triton._grouped_sum`,
one split), its range (:func:`_cam_triton._stats`), then every tile of its map
(:func:`_cam_triton._write_rows`), with a barrier between the phases (each phase reads what the
last one stored). Programs in different phases share a multiprocessor, so one sample's read
overlaps another's write: the bytes a launch must move are the same, the launch boundaries go.

The cost: a program per sample, so a batch smaller than the multiprocessor count leaves the
card part idle (the three-launch path splits channels across programs), and its channel sum is
the grouped one, where float32 at 28x28 is faster through cuBLAS. Selected with
``CONFIG["fuse"]``: ``"auto"`` (default: on CUDA, where it measured faster at batch 256 on an
H200: 16-bit maps of at most 64 positions (7x7 measured: 3-11% faster; 8x8 admitted untimed),
float32 maps of at most 14x14 (9-11% faster; fp32 1024x14x14 at 71% of the copy bandwidth),
with 1.8-2.0 samples per multiprocessor: batch 256 of 132 multiprocessors; it lost at batch 64,
132 and 512), ``"on"`` (wherever it applies: NCHW activations whose
channels form the grouped sum's rows, the grouped or ``"auto"`` channel sum, the separable
write) or ``"off"``. The maps, range and positions equal the three-launch grouped path's (same
functions, same summation order within a split; bit for bit in the interpreter, within 2e-6 of
the default and at the same positions on the H200). Imported only when the Triton backend runs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

import triton
import triton.language as tl

from egl.kernels._bilinear import on_device
from egl.kernels._cam_triton import (_cdiv, _grouped_sum, _pow2, _ratio, _sm_count, _stats, _write_rows,
                                     _write_tile, channel_group, grouped_tile)

__all__ = ["fused_forward", "applies", "auto_fuses"]


@triton.jit
def fused_kernel(a_ptr, w_ptr, part_ptr, low_ptr, rows_ptr, stat_ptr, idx_ptr, cy_ptr, cx_ptr, out_ptr,
                 R, sa_b, sw_b, sw_c, h, w, H, W, WP, NY, NX, NTX, NT, scale, ry, rx, rel_eps,
                 HW: tl.constexpr, G: tl.constexpr, PACKED: tl.constexpr, BLOCK_R: tl.constexpr,
                 BLOCK_P: tl.constexpr, PRECISION: tl.constexpr, RELU: tl.constexpr, NORMALIZE: tl.constexpr,
                 BLOCK_S: tl.constexpr, BLOCK_PS: tl.constexpr, BLOCK_K: tl.constexpr, BY: tl.constexpr,
                 BX: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    _grouped_sum(a_ptr, w_ptr, part_ptr, b, 0, R, R, 1, sa_b, sw_b, sw_c, HW, G, PACKED, BLOCK_R, BLOCK_P, PRECISION)
    tl.debug_barrier()  # the G partial maps, stored by every thread, are read back by others
    _stats(b, part_ptr, low_ptr, rows_ptr, stat_ptr, idx_ptr, cy_ptr, cx_ptr, G, HW, h, w, H, W, WP, NY, NX, scale,
           ry, rx, RELU, NORMALIZE, True, BLOCK_S, BLOCK_PS, BLOCK_K)
    tl.debug_barrier()  # the rows and the range, likewise
    for t in range(0, NT):
        _write_rows(rows_ptr, stat_ptr, out_ptr, b, t // NTX, t % NTX, h, H, W, WP, ry, rel_eps, NORMALIZE, BY, BX)


def applies(acts: Tensor, cfg: dict[str, Any]) -> bool:
    """Whether the one-launch forward serves ``acts`` under ``cfg``: the separable write, the grouped
    (or ``"auto"``) channel sum, NCHW activations (channels back to back) whose channels form whole
    grouped rows, and ``fuse="on"``,
    or ``"auto"`` on CUDA for maps of at most ``fuse_positions_16bit`` (16-bit) or
    ``fuse_positions_fp32`` positions with ``fuse_samples_per_sm`` to ``fuse_max_samples_per_sm``
    samples per multiprocessor (where it measured faster on an H200: see ``_cam_triton.CONFIG``)."""
    if cfg["fuse"] == "off" or cfg["write"] != "separable" or cfg["reduce"] not in ("auto", "grouped"):
        return False  # (an explicit other channel sum, or the gathering write: the three launches run it)
    b, c, h, w = acts.shape
    flat = acts.stride(3) == 1 and acts.stride(2) == w and acts.stride(1) == h * w
    if not (flat and channel_group(c, h * w, acts.element_size())):
        return False
    return cfg["fuse"] == "on" or (acts.is_cuda and auto_fuses(acts.dtype, h * w, b, _sm_count(str(acts.device)),
                                                                 cfg))


def auto_fuses(dtype: torch.dtype, positions: int, batch: int, sms: int, cfg: dict[str, Any]) -> bool:
    """``fuse="auto"``'s rule on CUDA: 16-bit maps of at most ``fuse_positions_16bit`` positions,
    float32 ones of at most ``fuse_positions_fp32``, and ``fuse_samples_per_sm`` to
    ``fuse_max_samples_per_sm`` samples per multiprocessor (a program per sample runs in steps of
    a sample per multiprocessor: just below the second step, the one launch beat the three on an
    H200; at one sample per multiprocessor and near four, it lost)."""
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    limit = cfg["fuse_positions_fp32"] if dtype == torch.float32 else cfg["fuse_positions_16bit"]
    return positions <= limit and cfg["fuse_samples_per_sm"] * sms <= batch <= cfg["fuse_max_samples_per_sm"] * sms


def fused_forward(acts: Tensor, weights: Tensor, size: tuple[int, int], scale: float, relu: bool, normalize: bool,
                  rel_eps: float, cfg: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`egl.kernels._cam_triton.forward` in one launch (where :func:`applies`)."""
    b, c, h, w = acts.shape
    hw = h * w
    hh, ww = size
    dev = acts.device
    group = channel_group(c, hw, acts.element_size())
    rows_n, row = c // group, group * hw
    block_r, block_p, warps = grouped_tile(rows_n, row, hw, cfg)
    # wide tiles: one program writes its whole map, a tile at a time (the loads of a step wait on
    # the last step's stores to issue), so each step should carry many pixels
    by, bx = _write_tile(size, {"write_rows": cfg["fuse_write_rows"], "write_cols": cfg["fuse_write_cols"]})
    wp = _cdiv(ww, bx) * bx
    part = torch.empty(b, group, hw, device=dev, dtype=torch.float32)
    work = torch.empty(b * (hw + 2), device=dev, dtype=torch.float32)
    low, stats = work[: b * hw].view(b, hw), work[b * hw:].view(b, 2)
    rows = torch.empty(b, h, wp, device=dev, dtype=torch.float32)
    argext = torch.empty(b, 2, device=dev, dtype=torch.int32)
    out = torch.empty(b, 1, hh, ww, device=dev, dtype=torch.float32)
    cy, cx = on_device("candidates", h, hh, dev), on_device("candidates", w, ww, dev)
    ntx = _cdiv(ww, bx)
    fused_kernel[(b,)](acts, weights, part, low, rows, stats, argext, cy, cx, out, rows_n, acts.stride(0),
                       *weights.stride(), h, w, hh, ww, wp, len(cy), len(cx), ntx, _cdiv(hh, by) * ntx, float(scale),
                       _ratio(h, hh), _ratio(w, ww), float(rel_eps), HW=hw, G=group,
                       PACKED=b == 1 or acts.stride(0) == c * hw, BLOCK_R=block_r, BLOCK_P=block_p,
                       PRECISION="tf32x3" if acts.dtype == torch.float32 else "ieee", RELU=relu, NORMALIZE=normalize,
                       BLOCK_S=max(2, _pow2(group)), BLOCK_PS=max(16, min(_pow2(hw), 4096 // _pow2(group))),
                       BLOCK_K=cfg["stats_block"], BY=by, BX=bx, num_warps=cfg["fuse_warps"] or warps)
    return out, low, stats, argext
