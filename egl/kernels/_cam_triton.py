"""The Triton kernels of the fused Grad-CAM epilogue (forward), and their launcher.

Three launches, each reading its input once, so that the bytes moved are the floor:
activations read once, maps written once.

1. ``reduce``: grid ``(B, S)``; program ``(b, s)`` sums ``w[b, c] · A[b, c]`` over its share of
   the channels into a partial map ``[B, S, h·w]`` (fp32). Splitting channels keeps every
   multiprocessor busy at any batch size; a fixed summation order keeps it deterministic.
2. ``stats``: grid ``(B,)``; sums the partials, scales, applies the ReLU, stores the
   low-resolution map and (``CONFIG["write"] == "separable"``) the map upsampled along ``x``
   only, ``rows [B, h, W']`` (``W'``: the output width rounded up to the write tile), then
   evaluates the upsampled map only on the candidate rows and columns where it can take its
   extremes (:func:`egl.kernels._bilinear.extreme_candidates`) and stores its min, max and their
   flat output positions (for the backward).
3. ``write``: grid ``(B, ⌈H/BY⌉, ⌈W/BX⌉)``; evaluates the upsampled map on its tile, normalises
   with the stored min and max (range-relative epsilon) and writes it: one store per pixel.
   ``"separable"`` (default) interpolates ``rows`` along ``y``: two contiguous vector loads and
   one vector store per four pixels; ``"gather"`` gathers the four source pixels of every output
   pixel from the low-resolution map. Compiled for sm_90, the separable tile takes 2.5x fewer
   instructions per pixel (``benchmarks/kernel_sass.py``: 38.8 -> 15.5), and the gather write
   was issue-bound on an H200 (45% of the copy bandwidth whatever the map size).

Stages 2 and 3 evaluate the map with one shared function per mode, so the stored extremes are
those of the written values. Imported only when the Triton backend runs.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

import triton
import triton.language as tl

from egl._check import check_choice
from egl.kernels._bilinear import on_device
from egl.kernels.cam_epilogue import hi_lo

__all__ = ["forward", "auto_reduce", "reduce_stage", "stats_stage", "write_stage", "CONFIG"]

#: Launch parameters (the GPU benchmark sweeps them): the channel-sum implementation (see
#: :func:`reduce_stage`), elements per ``reduce`` tile, warps of ``reduce``, output tile of
#: ``write`` (rows, columns), warps of ``write``, how many ``reduce`` programs to aim for per
#: multiprocessor, software-pipelining depth of ``reduce`` (0: Triton's default), the write
#: stage's formulation (``"separable"`` or ``"gather"``, see above), positions per step and warps of
#: ``stats`` (``stats_block``, ``stats_warps``: one program per sample walks its rows and extreme
#: candidates in steps of that many), the ``grouped`` channel sum's tile and warps for maps of at most
#: ``small_map_positions`` positions (7x7, 8x8: 4096 elements, 4 warps; larger maps keep
#: ``reduce_tile`` / ``reduce_warps``; 0 turns the rule off: in two H200 sessions the forward took
#: 29.4 / 45.3 µs against 31.2-31.5 / 48.3-48.5 at bf16 512x7x7 / 2048x7x7, and 9-13% longer at
#: 14x14 and 28x28, where it is not used), whether the forward runs as one launch where it can
#: (``fuse``: ``"auto"``, ``"off"`` or ``"on"``, :mod:`egl.kernels._cam_triton_fused`, with its write
#: tile and warps: ``fuse_write_rows`` x ``fuse_write_cols``, ``fuse_warps``, 0 for the channel sum's;
#: ``"auto"`` fuses on CUDA for maps of at most ``fuse_positions_16bit`` / ``fuse_positions_fp32``
#: positions and between ``fuse_samples_per_sm`` and ``fuse_max_samples_per_sm`` samples per
#: multiprocessor: at batch 256 on an
#: H200 the one launch took 26.0 / 44.5 µs against 29.3 / 45.7 at bf16 512x7x7 / 2048x7x7, 29.2 /
#: 54.7 / 85.5 against 32.0 / 60.7 / 96.1 at fp32 512x7x7 / 2048x7x7 / 1024x14x14, the same at bf16
#: 14x14 and 28x28, and 193 against 149 µs at fp32 28x28, where cuBLAS sums the channels; its time
#: goes up in steps of a sample per multiprocessor (a program per sample: bf16 512x7x7 13.9 / 26.0
#: / 57.0 µs at batch 132 / 256 / 512), the three launches' in proportion to the batch, so over the
#: five fused shapes it lost at batch 64, 132 and 512 (151 against 142 µs at 132, 489 against 481
#: at 512) and won only at 256, 1.94 samples per multiprocessor: the window is 1.8-2.0, the second
#: step nearly full; the channel sum's warps (8: 1-4% slower at 256) and one program a sample (2 or
#: 4, each summing the sample and writing its share of the tiles: up to 3x slower) as timed), and
#: how the backward forms the gradients of the activations and weights (``"torch"``: a broadcast product and a batched
#: matrix product; ``"triton"``: one pass, :func:`egl.kernels._cam_triton_backward.input_grads`).
#: Chosen by benchmarks/kernel.py on an H200 (docs/performance.md): ``reduce="auto"``
#: (``grouped`` for 16-bit activations, ``bmm`` for fp32) beat the elementwise loop at every size
#: (up to 3.1x); ``grouped`` (16-byte loads, :func:`reduce_grouped_kernel`) took 8.7 / 23 / 37 µs
#: where ``dot`` took 9.1 / 32 / 65 µs (bf16 512x7x7 / 2048x7x7 / 1024x14x14, batch 256), the same
#: at 28x28; the separable write took 17.5-19 µs where the gather took 24 µs; 8192-element tiles
#: with 8 warps. ``grads="auto"``: the one-pass backward over rows of whole channels
#: (``"grouped"``) for 16-bit NCHW activations on CUDA (38-475 µs against the two PyTorch ops'
#: 58-557 µs), the two PyTorch ops (``"torch"``) elsewhere (fp32: 35-370 µs against the one-pass
#: loop's 144-1139 µs; channels-last: no whole-channel rows).
CONFIG: dict[str, Any] = {"reduce": "auto", "reduce_tile": 8192, "reduce_warps": 8, "write": "separable",
                          "write_rows": 32, "write_cols": 32, "write_warps": 2, "programs_per_sm": 4,
                          "reduce_stages": 0, "grads": "auto", "stats_block": 1024, "stats_warps": 4,
                          "small_map_positions": 64, "small_map_tile": 4096, "small_map_warps": 4, "fuse": "auto",
                          "fuse_write_rows": 32, "fuse_write_cols": 256, "fuse_warps": 0, "fuse_positions_16bit": 64,
                          "fuse_positions_fp32": 196, "fuse_samples_per_sm": 1.8,
                          "fuse_max_samples_per_sm": 2.0}
WRITES = ("separable", "gather")
REDUCES = ("auto", "loop", "dot", "bmm", "grouped")
GRADS = ("auto", "torch", "triton", "grouped")
FUSES = ("auto", "off", "on")
_INT32_LIMIT = 2**31


@triton.jit
def _src(o, ratio, n_src):
    s = tl.maximum((o.to(tl.float32) + 0.5) * ratio - 0.5, 0.0)
    i0 = tl.minimum(s.to(tl.int32), n_src - 1)
    i1 = tl.minimum(i0 + 1, n_src - 1)
    return i0, i1, s - i0.to(tl.float32)


@triton.jit
def _bilinear(base, y0, y1, ly, x0, x1, lx, w, mask):
    v00 = tl.load(base + y0 * w + x0, mask=mask, other=0.0)
    v01 = tl.load(base + y0 * w + x1, mask=mask, other=0.0)
    v10 = tl.load(base + y1 * w + x0, mask=mask, other=0.0)
    v11 = tl.load(base + y1 * w + x1, mask=mask, other=0.0)
    top = (1.0 - lx) * v00 + lx * v01
    bot = (1.0 - lx) * v10 + lx * v11
    return (1.0 - ly) * top + ly * bot


@triton.jit
def _lerp_rows(rows, y0, y1, ly, ox, wp):
    """The upsampled map from ``rows`` (upsampled along ``x``, row stride ``wp``): a lerp along ``y``."""
    return (1.0 - ly) * tl.load(rows + y0 * wp + ox) + ly * tl.load(rows + y1 * wp + ox)


@triton.jit
def _normalized(v, stat_ptr, b, rel_eps):
    """``v`` min-max normalised with sample ``b``'s stored extremes (range-relative epsilon: a
    flat or NaN range gives zeros)."""
    mn = tl.load(stat_ptr + 2 * b)
    mx = tl.load(stat_ptr + 2 * b + 1)
    rng = mx - mn
    ok = rng > rel_eps * tl.maximum(tl.abs(mn), tl.abs(mx))
    inv = 1.0 / tl.where(ok, rng, 1.0)
    return tl.where(ok, tl.minimum(tl.maximum((v - mn) * inv, 0.0), 1.0), 0.0)


@triton.jit
def _positions(p0, hw, BLOCK_P: tl.constexpr, CLAMP: tl.constexpr, WIDE: tl.constexpr):
    """One block of positions ``p``, its mask ``p < hw``, and the positions to address: clamped
    to ``hw - 1`` with ``CLAMP`` (loads in bounds without a mask), 64-bit with ``WIDE``."""
    p = p0 + tl.arange(0, BLOCK_P)
    pm = p < hw
    if CLAMP:
        pc = tl.minimum(p, hw - 1)
    else:
        pc = p
    if WIDE:
        pc = pc.to(tl.int64)
    return p, pm, pc


@triton.jit
def reduce_kernel(a_ptr, w_ptr, part_ptr, C, hw, w, CH, S, sa_b, sa_c, sa_h, sa_w, sw_b, sw_c,
                  FLAT: tl.constexpr, CLAMP: tl.constexpr, EVEN_C: tl.constexpr, WIDE: tl.constexpr,
                  BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Few instructions per loaded element: the tile's offsets (``int32`` unless ``WIDE``) are
    computed once per position block and added to a per-tile base pointer; with ``CLAMP``
    (rows not 16-byte aligned, so loads are scalar anyway) positions past ``hw`` are clamped
    instead of masked (their sums are never stored), and with ``EVEN_C`` (``BLOCK_C`` divides
    ``C``) no channel is masked: unmasked loads need no predicates and no zero fill."""
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    c_lo = s * CH
    c_hi = tl.minimum(c_lo + CH, C)
    a_b = a_ptr + b * sa_b
    w_b = w_ptr + b * sw_b
    rows = tl.arange(0, BLOCK_C)
    if WIDE:
        rows = rows.to(tl.int64)
    for p0 in range(0, hw, BLOCK_P):
        p, pm, pc = _positions(p0, hw, BLOCK_P, CLAMP, WIDE)
        if FLAT:  # contiguous positions (NCHW)
            poff = pc
        else:
            poff = (pc // w) * sa_h + (pc % w) * sa_w
        offs = rows[:, None] * sa_c + poff[None, :]
        acc = tl.zeros([BLOCK_C, BLOCK_P], dtype=tl.float32)
        for c0 in range(c_lo, c_hi, BLOCK_C):
            a_t = a_b + tl.cast(c0, tl.int64) * sa_c
            if EVEN_C:
                wv = tl.load(w_b + (c0 + rows) * sw_c).to(tl.float32)
                if CLAMP:
                    av = tl.load(a_t + offs).to(tl.float32)
                else:
                    av = tl.load(a_t + offs, mask=pm[None, :], other=0.0).to(tl.float32)
            else:
                cm = c0 + rows < c_hi
                wv = tl.load(w_b + (c0 + rows) * sw_c, mask=cm, other=0.0).to(tl.float32)
                av = tl.load(a_t + offs, mask=cm[:, None] & pm[None, :], other=0.0).to(tl.float32)
            acc += wv[:, None] * av
        tl.store(part_ptr + (b * S + s) * hw + p, tl.sum(acc, axis=0), mask=pm)


@triton.jit
def reduce_dot_kernel(a_ptr, w_ptr, part_ptr, C, hw, CH, S, sa_b, sa_c, sw_b, sw_c,
                      BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    """``reduce_kernel`` as a ``[16, C] x [C, h·w]`` product per sample: the loads feed ``tl.dot``,
    which Triton software-pipelines. Contiguous positions (NCHW) only. With 16-bit activations
    the fp32 weights are split in two 16-bit parts, ``w ≈ hi + lo`` (rows 0 and 1; the rows are
    summed): the sum keeps about 16 mantissa bits of ``w`` where one 16-bit row would keep 8 (bf16).
    The split costs nothing (the product has 16 rows whatever fills them)."""
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    c_lo = s * CH
    c_hi = tl.minimum(c_lo + CH, C)
    rows = tl.arange(0, 16)
    for p0 in range(0, hw, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pm = p < hw
        acc = tl.zeros([16, BLOCK_P], dtype=tl.float32)
        for c0 in range(c_lo, c_hi, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            cm = cs < c_hi
            av = tl.load(a_ptr + b * sa_b + cs[:, None].to(tl.int64) * sa_c + p[None, :],
                         mask=cm[:, None] & pm[None, :], other=0.0)
            wv = tl.load(w_ptr + b * sw_b + cs * sw_c, mask=cm, other=0.0)
            hi = wv.to(av.dtype)
            lo = (wv - hi.to(tl.float32)).to(av.dtype)  # zero when av is fp32
            wm = tl.where(rows[:, None] == 0, hi[None, :], tl.where(rows[:, None] == 1, lo[None, :], 0.0))
            acc = tl.dot(wm, av, acc, input_precision=PRECISION)
        tl.store(part_ptr + (b * S + s) * hw + p, tl.sum(acc, axis=0), mask=pm)


@triton.jit
def reduce_grouped_kernel(a_ptr, w_ptr, part_ptr, R, RH, S, sa_b, sw_b, sw_c, HW: tl.constexpr, G: tl.constexpr,
                          PACKED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    """``reduce_dot_kernel`` over rows of ``G`` whole channels: each sample's ``[C, h·w]`` block
    read as ``[C / G, G·h·w]``, ``G`` the fewest channels whose row fills whole 16-byte words
    (bf16 7x7: ``G = 8``, 784-byte rows, where one channel's 98-byte row is never aligned). The
    loads become 16-byte vectors; the product's 16 rows hold ``hi`` (rows ``k < G``) and ``lo``
    (rows ``G + k``) of channel ``G·r + k``'s weight, so column ``j`` of segment ``k = j // h·w``
    takes rows ``k`` and ``G + k``. Stores ``G`` partial maps per program: ``part`` is
    ``[B, S·G, h·w]``. With ``PACKED`` (samples back to back) a sample starts ``R·G·h·w``
    values after the last, which Triton then knows to be 16-byte aligned whatever ``R`` is."""
    b = tl.program_id(0).to(tl.int64)
    _grouped_sum(a_ptr, w_ptr, part_ptr, b, tl.program_id(1), R, RH, S, sa_b, sw_b, sw_c, HW, G, PACKED, BLOCK_R,
                 BLOCK_P, PRECISION)


@triton.jit
def _grouped_sum(a_ptr, w_ptr, part_ptr, b, s, R, RH, S, sa_b, sw_b, sw_c, HW: tl.constexpr, G: tl.constexpr,
                 PACKED: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr, PRECISION: tl.constexpr):
    """Program ``(b, s)`` of :func:`reduce_grouped_kernel` (also the fused kernel's channel sum)."""
    L: tl.constexpr = G * HW
    if PACKED:
        a_b = a_ptr + b * R * L
    else:
        a_b = a_ptr + b * sa_b
    r_lo = s * RH
    r_hi = tl.minimum(r_lo + RH, R)
    m = tl.arange(0, 16)
    k = m % G
    used = m < 2 * G
    for p0 in range(0, L, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pm = p < L
        acc = tl.zeros([16, BLOCK_P], dtype=tl.float32)
        for r0 in range(r_lo, r_hi, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            rm = rs < r_hi
            av = tl.load(a_b + rs[:, None].to(tl.int64) * L + p[None, :],
                         mask=rm[:, None] & pm[None, :], other=0.0)
            wv = tl.load(w_ptr + b * sw_b + (rs[None, :] * G + k[:, None]) * sw_c,
                         mask=used[:, None] & rm[None, :], other=0.0)
            hi = wv.to(av.dtype)
            lo = (wv - hi.to(tl.float32)).to(av.dtype)  # zero when av is fp32
            acc = tl.dot(tl.where((m < G)[:, None], hi, lo), av, acc, input_precision=PRECISION)
        mine = used[:, None] & (k[:, None] == (p // HW)[None, :])
        tl.store(part_ptr + (b * S + s) * L + p, tl.sum(tl.where(mine, acc, 0.0), axis=0), mask=pm)


@triton.jit
def stats_kernel(part_ptr, low_ptr, rows_ptr, stat_ptr, idx_ptr, cy_ptr, cx_ptr, S, hw, h, w, H, W, WP, NY, NX,
                 scale, ry, rx, RELU: tl.constexpr, NORMALIZE: tl.constexpr, SEPARABLE: tl.constexpr,
                 BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    _stats(tl.program_id(0).to(tl.int64), part_ptr, low_ptr, rows_ptr, stat_ptr, idx_ptr, cy_ptr, cx_ptr, S, hw, h,
           w, H, W, WP, NY, NX, scale, ry, rx, RELU, NORMALIZE, SEPARABLE, BLOCK_S, BLOCK_P, BLOCK_K)


@triton.jit
def _stats(b, part_ptr, low_ptr, rows_ptr, stat_ptr, idx_ptr, cy_ptr, cx_ptr, S, hw, h, w, H, W, WP, NY, NX,
           scale, ry, rx, RELU: tl.constexpr, NORMALIZE: tl.constexpr, SEPARABLE: tl.constexpr,
           BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """Sample ``b`` of :func:`stats_kernel` (also the fused kernel's middle)."""
    ss = tl.arange(0, BLOCK_S)
    n_nan = tl.zeros([BLOCK_P], dtype=tl.int32)
    for p0 in range(0, hw, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pm = p < hw
        part = tl.load(part_ptr + (b * S + ss[:, None]) * hw + p[None, :],
                       mask=(ss[:, None] < S) & pm[None, :], other=0.0)
        low = tl.sum(part, axis=0) * scale
        n_nan += (low != low).to(tl.int32)
        if RELU:  # NaN stays NaN, as torch.relu keeps it (a hardware max would drop it)
            low = tl.where(low != low, low, tl.maximum(low, 0.0))
        tl.store(low_ptr + b * hw + p, low, mask=pm)
    tl.debug_barrier()  # the low-resolution map is read back by other threads below
    if SEPARABLE:  # rows[r, ox]: row r of the map upsampled along x (columns past W: clamped, unused)
        for k0 in range(0, h * WP, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            km = k < h * WP
            x0, x1, lx = _src(k % WP, rx, w)
            src = low_ptr + b * hw + (k // WP) * w
            v = (1.0 - lx) * tl.load(src + x0, mask=km, other=0.0) + lx * tl.load(src + x1, mask=km, other=0.0)
            tl.store(rows_ptr + b * h * WP + k, v, mask=km)
        tl.debug_barrier()
    if NORMALIZE:
        best_lo = tl.full([BLOCK_K], float("inf"), tl.float32)
        best_hi = tl.full([BLOCK_K], float("-inf"), tl.float32)
        at_lo = tl.zeros([BLOCK_K], dtype=tl.int32)
        at_hi = tl.zeros([BLOCK_K], dtype=tl.int32)
        for k0 in range(0, NY * NX, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            km = k < NY * NX
            oy = tl.load(cy_ptr + k // NX, mask=km, other=0)
            ox = tl.load(cx_ptr + k % NX, mask=km, other=0)
            y0, y1, ly = _src(oy, ry, h)
            if SEPARABLE:  # masked lanes read candidate 0: valid, and never selected
                v = _lerp_rows(rows_ptr + b * h * WP, y0, y1, ly, ox, WP)
            else:
                x0, x1, lx = _src(ox, rx, w)
                v = _bilinear(low_ptr + b * hw, y0, y1, ly, x0, x1, lx, w, km)
            flat = oy * W + ox
            lo_new = km & (v < best_lo)  # strict: keeps the first position on ties
            hi_new = km & (v > best_hi)
            at_lo = tl.where(lo_new, flat, at_lo)
            at_hi = tl.where(hi_new, flat, at_hi)
            best_lo = tl.where(lo_new, v, best_lo)
            best_hi = tl.where(hi_new, v, best_hi)
        mn = tl.min(best_lo, axis=0)
        mx = tl.max(best_hi, axis=0)
        # a NaN anywhere makes the range NaN, hence the map all zeros, as in minmax_normalize
        mn = tl.where(tl.sum(n_nan, axis=0) > 0, float("nan"), mn)
        big = H * W
        tl.store(stat_ptr + 2 * b, mn)
        tl.store(stat_ptr + 2 * b + 1, mx)
        # with a NaN no value equals mn: clamp, so that a position is always a valid pixel
        tl.store(idx_ptr + 2 * b, tl.minimum(tl.min(tl.where(best_lo == mn, at_lo, big), axis=0), big - 1))
        tl.store(idx_ptr + 2 * b + 1, tl.minimum(tl.min(tl.where(best_hi == mx, at_hi, big), axis=0), big - 1))


@triton.jit
def write_kernel(low_ptr, stat_ptr, out_ptr, hw, h, w, H, W, ry, rx, rel_eps,
                 NORMALIZE: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    oy = tl.program_id(1) * BY + tl.arange(0, BY)
    ox = tl.program_id(2) * BX + tl.arange(0, BX)
    y0, y1, ly = _src(oy, ry, h)
    x0, x1, lx = _src(ox, rx, w)
    m = (oy < H)[:, None] & (ox < W)[None, :]
    v = _bilinear(low_ptr + b * hw, y0[:, None], y1[:, None], ly[:, None], x0[None, :], x1[None, :],
                  lx[None, :], w, m)
    if NORMALIZE:
        v = _normalized(v, stat_ptr, b, rel_eps)
    tl.store(out_ptr + b * H * W + oy[:, None] * W + ox[None, :], v, mask=m)


@triton.jit
def write_rows_kernel(rows_ptr, stat_ptr, out_ptr, h, H, W, WP, ry, rel_eps,
                      NORMALIZE: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr):
    """``write_kernel`` from ``rows``: every load is in bounds (``WP`` is a multiple of ``BX``,
    source rows are clamped), so only the store is masked."""
    _write_rows(rows_ptr, stat_ptr, out_ptr, tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2), h, H,
                W, WP, ry, rel_eps, NORMALIZE, BY, BX)


@triton.jit
def _write_rows(rows_ptr, stat_ptr, out_ptr, b, ty, tx, h, H, W, WP, ry, rel_eps,
                NORMALIZE: tl.constexpr, BY: tl.constexpr, BX: tl.constexpr):
    """Tile ``(ty, tx)`` of sample ``b``'s map (also the fused kernel's write)."""
    oy = ty * BY + tl.arange(0, BY)
    ox = tx * BX + tl.arange(0, BX)
    y0, y1, ly = _src(oy, ry, h)
    v = _lerp_rows(rows_ptr + b * h * WP, y0[:, None], y1[:, None], ly[:, None], ox[None, :], WP)
    if NORMALIZE:
        v = _normalized(v, stat_ptr, b, rel_eps)
    tl.store(out_ptr + b * H * W + oy[:, None] * W + ox[None, :], v, mask=(oy < H)[:, None] & (ox < W)[None, :])


def _pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@lru_cache(maxsize=8)
def _sm_count(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
    return 4  # the interpreter on CPU: any small number exercises the channel split


def forward(acts: Tensor, weights: Tensor, size: tuple[int, int], scale: float, relu: bool, normalize: bool,
            rel_eps: float, config: dict[str, Any] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Run the three stages (as one launch where :func:`egl.kernels._cam_triton_fused.applies`).
    Returns ``(maps [B,1,H,W], low [B,h·w], stats [B,2], argext [B,2])``.

    ``low`` is the scaled (and ReLU'd) low-resolution map; ``stats`` its upsampled min and max;
    ``argext`` their flat output positions (int32). The last two are left empty without
    ``normalize``.
    """
    cfg = {**CONFIG, **(config or {})}
    check_choice(cfg["fuse"], FUSES, "egl.kernels._cam_triton", "config['fuse']")
    if cfg["fuse"] != "off":
        from egl.kernels._cam_triton_fused import applies, fused_forward

        if applies(acts, cfg):
            return fused_forward(acts, weights, size, scale, relu, normalize, rel_eps, cfg)
    part = reduce_stage(acts, weights, cfg)
    low, rows, stats, argext = stats_stage(part, acts.shape[-2:], size, scale, relu, normalize, cfg)
    return write_stage(low, rows, stats, acts.shape[-2:], size, normalize, rel_eps, cfg), low, stats, argext


def channel_split(b: int, c: int, block_c: int, device: torch.device, cfg: dict[str, Any]) -> tuple[int, int]:
    """``(splits, channels per split)``: each sample's channels cut into shares, a whole number of
    ``block_c`` tiles each, so that about ``cfg["programs_per_sm"]`` programs run per
    multiprocessor whatever the batch (at most 64 shares)."""
    target = cfg["programs_per_sm"] * _sm_count(str(device))
    splits = max(1, min(_cdiv(c, block_c), _cdiv(target, b), 64))
    ch = _cdiv(_cdiv(c, splits), block_c) * block_c
    return _cdiv(c, ch), ch


def grouped_tile(rows: int, row: int, hw: int, cfg: dict[str, Any]) -> tuple[int, int, int]:
    """``(BLOCK_R, BLOCK_P, warps)`` of the grouped channel sum over ``rows`` rows of ``row``
    values: the small-map tile and warps for maps of at most ``small_map_positions`` positions."""
    small = hw <= cfg["small_map_positions"]
    tile = cfg["small_map_tile"] if small else cfg["reduce_tile"]
    warps = cfg["small_map_warps"] if small else cfg["reduce_warps"]
    block_p = max(16, min(_pow2(row), 256))
    return max(16, min(_pow2(rows), tile // block_p)), block_p, warps


def channel_group(c: int, hw: int, itemsize: int) -> int:
    """The fewest whole channels ``G`` whose ``h·w`` values fill whole 16-byte words (the
    ``"grouped"`` channel sum's rows), or 0 when ``G`` does not divide ``c`` or exceeds 8 (1-byte
    types). bf16: 8 at 7x7, 2 at 14x14, 1 at 28x28; fp32: 4 at 7x7, 1 at 14x14."""
    g = 16 // math.gcd(hw * itemsize, 16)
    return g if c % g == 0 and 2 * g <= 16 else 0  # (the product's 16 rows hold hi and lo of G channels)


def tile_flags(tensors: tuple[Tensor, ...], block_c: int) -> dict[str, bool]:
    """The ``CLAMP``, ``EVEN_C`` and ``WIDE`` constexprs of a channel-tiled kernel over ``B C h w``
    tensors: clamp positions unless every tensor has 16-byte-aligned contiguous rows (then masked
    loads vectorise), no channel mask when ``block_c`` divides the channels, 64-bit offsets when a
    tile's could overflow int32."""
    _, c, h, w = tensors[0].shape
    flat = all(t.stride(3) == 1 and t.stride(2) == w for t in tensors)
    reach = max(block_c * t.stride(1) + h * t.stride(2) + w * t.stride(3) for t in tensors)
    return {"CLAMP": not (flat and h * w % 16 == 0), "EVEN_C": c % block_c == 0, "WIDE": reach >= _INT32_LIMIT}


def auto_reduce(device_type: str, dtype: torch.dtype) -> str:
    """``reduce="auto"``'s channel sum for NCHW activations: on CUDA ``"grouped"`` for 16-bit,
    ``"bmm"`` for float32, ``"dot"`` for float64; ``"loop"`` elsewhere."""
    if device_type != "cuda":
        return "loop"
    return "bmm" if dtype == torch.float32 else "grouped" if dtype.itemsize == 2 else "dot"


def reduce_stage(acts: Tensor, weights: Tensor, cfg: dict[str, Any]) -> Tensor:
    """Partial channel sums ``[B, S, h·w]`` (fp32); ``cfg["reduce"]`` picks the implementation:
    ``"loop"`` (elementwise tiles), ``"dot"`` (tiles through ``tl.dot``; NCHW only), ``"bmm"``
    (cuBLAS batched matrix product with fp32 output; CUDA and NCHW only), ``"grouped"`` (``"dot"``
    over rows of whole channels that fill 16-byte words, :func:`reduce_grouped_kernel`; ``"dot"``
    where no such group divides the channels) or ``"auto"`` (the default: on CUDA,
    ``"grouped"`` for 16-bit activations and ``"bmm"`` for fp32, the fastest at every size of
    benchmarks/kernel.py on an H200, ``"dot"`` for float64; ``"loop"`` elsewhere and for
    channels-last activations). ``"dot"`` and ``"bmm"`` split the fp32 weights of 16-bit activations in two
    16-bit parts (see :func:`reduce_dot_kernel`); ``"bmm"`` on fp32 follows
    ``torch.backends.cuda.matmul.allow_tf32`` like any fp32 matrix product."""
    b, c, h, w = acts.shape
    hw = h * w
    dev = acts.device
    check_choice(cfg["reduce"], REDUCES, "egl.kernels._cam_triton", "config['reduce']")
    flat = acts.stride(3) == 1 and acts.stride(2) == w
    impl = cfg["reduce"] if flat else "loop"
    if impl == "auto":
        impl = auto_reduce(acts.device.type, acts.dtype)
    group = channel_group(c, hw, acts.element_size()) if impl == "grouped" and acts.stride(1) == hw else 0
    if impl == "grouped" and not group:  # channels that fill no whole row, or gaps between channels
        impl = "dot"
    extra = {"num_stages": cfg["reduce_stages"]} if cfg["reduce_stages"] else {}
    precision = "tf32x3" if acts.dtype == torch.float32 else "ieee"
    if impl == "grouped":
        rows, row = c // group, group * hw
        block_r, block_p, warps = grouped_tile(rows, row, hw, cfg)
        splits, rh = channel_split(b, rows, block_r, dev, cfg)
        part = torch.empty(b, splits, row, device=dev, dtype=torch.float32)
        reduce_grouped_kernel[(b, splits)](acts, weights, part, rows, rh, splits, acts.stride(0), *weights.stride(),
                                           HW=hw, G=group, PACKED=b == 1 or acts.stride(0) == c * hw,
                                           BLOCK_R=block_r, BLOCK_P=block_p, PRECISION=precision,
                                           num_warps=warps, **extra)
        return part.view(b, splits * group, hw)
    if impl == "bmm" and acts.is_cuda:
        wt = weights.float().unsqueeze(1)
        if acts.dtype != torch.float32:  # w ≈ hi + lo, two rows: the stats stage sums them
            wt = hi_lo(wt, acts.dtype, 1)
        return torch.bmm(wt, acts.reshape(b, c, hw), out_dtype=torch.float32)
    if impl == "dot":
        block_p = max(16, min(_pow2(hw), 256))
        block_c = max(16, min(_pow2(c), cfg["reduce_tile"] // block_p))
    else:
        block_p = min(_pow2(hw), 1024)
        block_c = max(1, min(_pow2(c), cfg["reduce_tile"] // block_p))
    splits, ch = channel_split(b, c, block_c, dev, cfg)
    part = torch.empty(b, splits, hw, device=dev, dtype=torch.float32)
    if impl == "dot":
        reduce_dot_kernel[(b, splits)](acts, weights, part, c, hw, ch, splits, acts.stride(0), acts.stride(1),
                                       *weights.stride(), BLOCK_C=block_c, BLOCK_P=block_p, PRECISION=precision,
                                       num_warps=cfg["reduce_warps"], **extra)
    else:
        reduce_kernel[(b, splits)](acts, weights, part, c, hw, w, ch, splits, *acts.stride(), *weights.stride(),
                                   FLAT=flat, **tile_flags((acts,), block_c), BLOCK_C=block_c, BLOCK_P=block_p,
                                   num_warps=cfg["reduce_warps"], **extra)
    return part


def stats_stage(part: Tensor, hw_shape: Any, size: tuple[int, int], scale: float, relu: bool,
                normalize: bool, cfg: dict[str, Any]) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """``low [B, h·w]``, ``rows [B, h, W']`` (separable write; else ``None``), the upsampled
    ``[min, max]`` and their flat positions, from the partial sums."""
    b, splits, hw = part.shape
    h, w = int(hw_shape[0]), int(hw_shape[1])
    hh, ww = size
    dev = part.device
    check_choice(cfg["write"], WRITES, "egl.kernels._cam_triton", "config['write']")
    separable = cfg["write"] == "separable"
    bx = _write_tile(size, cfg)[1]
    wp = _cdiv(ww, bx) * bx if separable else 0  # rows padded to whole write tiles: no masked loads
    work = torch.empty(b * (hw + 2), device=dev, dtype=torch.float32)  # one allocation for both
    low, stats = work[: b * hw].view(b, hw), work[b * hw:].view(b, 2)
    # an allocation of its own: aligned (the write's loads vectorise), and freed after the forward
    # (the backward keeps low and stats)
    rows = torch.empty(b, h, wp, device=dev, dtype=torch.float32) if separable else None
    argext = torch.empty(b, 2, device=dev, dtype=torch.int32)
    cy, cx = on_device("candidates", h, hh, dev), on_device("candidates", w, ww, dev)
    ry, rx = _ratio(h, hh), _ratio(w, ww)
    stats_kernel[(b,)](part, low, low if rows is None else rows, stats, argext, cy, cx, splits, hw, h, w, hh, ww,
                       wp, len(cy), len(cx), float(scale), ry, rx, RELU=relu, NORMALIZE=normalize,
                       SEPARABLE=separable, BLOCK_S=max(2, _pow2(splits)),
                       BLOCK_P=max(16, min(_pow2(hw), 4096 // _pow2(splits))), BLOCK_K=cfg["stats_block"],
                       num_warps=cfg["stats_warps"])
    return low, rows, stats, argext


def _write_tile(size: tuple[int, int], cfg: dict[str, Any]) -> tuple[int, int]:
    """Rows and columns of one ``write`` program's tile."""
    return min(_pow2(size[0]), cfg["write_rows"]), min(_pow2(size[1]), cfg["write_cols"])


def write_stage(low: Tensor, rows: Tensor | None, stats: Tensor, hw_shape: Any, size: tuple[int, int],
                normalize: bool, rel_eps: float, cfg: dict[str, Any]) -> Tensor:
    """The upsampled, normalised maps ``[B, 1, H, W]``: one store per pixel (from ``rows``
    when the stats stage made them, else gathered from ``low``)."""
    b, hw = low.shape
    h, w = int(hw_shape[0]), int(hw_shape[1])
    hh, ww = size
    out = torch.empty(b, 1, hh, ww, device=low.device, dtype=torch.float32)
    by, bx = _write_tile(size, cfg)
    grid = (b, _cdiv(hh, by), _cdiv(ww, bx))
    if rows is not None and rows.shape[2] % bx:  # its loads are unmasked: rows must span whole tiles
        raise ValueError(f"egl.kernels._cam_triton.write_stage: 'rows' are {rows.shape[2]} wide, not a multiple of "
                         f"the write tile's {bx} columns; pass the config that stats_stage was given")
    if rows is not None:
        write_rows_kernel[grid](rows, stats, out, h, hh, ww, rows.shape[2], _ratio(h, hh), float(rel_eps),
                                NORMALIZE=normalize, BY=by, BX=bx, num_warps=cfg["write_warps"])
    else:
        write_kernel[grid](low, stats, out, hw, h, w, hh, ww, _ratio(h, hh), _ratio(w, ww), float(rel_eps),
                           NORMALIZE=normalize, BY=by, BX=bx, num_warps=cfg["write_warps"])
    return out


@lru_cache(maxsize=256)
def _ratio(n_src: int, n_out: int) -> float:
    """``n_src / n_out`` rounded as PyTorch's float32 source-index rule computes it."""
    return float(torch.tensor(n_src, dtype=torch.float32) / n_out)
