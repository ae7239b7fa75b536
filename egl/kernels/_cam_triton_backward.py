"""The Triton kernels of the epilogue's analytic backward (see ``cam_epilogue._backward``).

1. ``transpose_upsample``: grid ``(B, ⌈H/BY⌉)``; ``M_t = U_yᵀ[:, rows] · G[rows, :] · U_x`` for
   one band of output rows, as two small matrix products on tiles whose interpolation weights
   are built in registers; the incoming gradient ``G`` is read once. With normalisation, ``G`` is
   zero at outputs that copy the source pixel of the minimum or maximum (they are 0 or 1
   identically; :func:`egl.kernels._bilinear.pinned`), read from the rows' and columns' copy classes.
2. ``finish``: grid ``(B,)``; sums the bands, applies the min/max terms, the ReLU mask and the
   scale, and writes ``d [B, h·w]``, from which ``d acts = w ⊗ d`` and ``d w = acts · d``.
3. ``input_grads`` (``CONFIG["grads"] == "grouped"``: rows of whole channels, 16-byte loads and
   stores, for 16-bit NCHW activations, the choice of the default ``"auto"`` there, 1.2-1.6x
   faster than the two PyTorch ops on an H200; ``"triton"``: one channel a row, 1.2-6.5x slower
   than the PyTorch ops, kept for comparison): grid ``(B, S)`` over channel shares as the
   forward's channel sum; writes ``d acts`` in the activations' dtype and layout and sums ``d w``
   in float32, reading the activations once. ``"torch"`` (``"auto"``'s choice elsewhere) is one
   broadcast product and one batched matrix-vector product, two passes.

Used when the feature map is at most 64 x 64 (the interpolation tiles stay in registers);
larger maps take the PyTorch formulation of the same maths. Imported only when Triton runs.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from egl.kernels._bilinear import on_device
from egl.kernels._cam_triton import _cdiv, _positions, _pow2, _ratio, _src

__all__ = ["auto_grads", "grad_low", "grouped_rows", "input_grads", "supported"]

MAX_SIDE = 64


def supported(h: int, w: int) -> bool:
    """Feature maps the Triton backward handles."""
    return h <= MAX_SIDE and w <= MAX_SIDE


@triton.jit
def _row_weights(o, ratio, n_src, idx):
    """Interpolation weight of source index ``idx`` for output index ``o`` (broadcasting)."""
    i0, i1, lam = _src(o, ratio, n_src)
    return tl.where(idx == i0, 1.0 - lam, 0.0) + tl.where(idx == i1, lam, 0.0)


@triton.jit
def transpose_upsample(g_ptr, band_ptr, idx_ptr, cy_ptr, cx_ptr, h, w, H, W, ry, rx, T, NORMALIZE: tl.constexpr,
                       BY: tl.constexpr, BX: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    oy = t * BY + tl.arange(0, BY)
    ym = oy < H
    yy = tl.arange(0, HP)
    xx = tl.arange(0, WP)
    acc = tl.zeros([BY, WP], dtype=tl.float32)
    if NORMALIZE:  # outputs copying the source pixel of the minimum or maximum: no gradient (_bilinear.pinned)
        at_mn = tl.load(idx_ptr + 2 * b)
        at_mx = tl.load(idx_ptr + 2 * b + 1)
        cy = tl.load(cy_ptr + oy, mask=ym, other=-1)  # copy classes (egl.kernels._bilinear.copy_classes)
        row_mn = cy == tl.load(cy_ptr + at_mn // W)
        row_mx = cy == tl.load(cy_ptr + at_mx // W)
        col_mn = tl.load(cx_ptr + at_mn % W)
        col_mx = tl.load(cx_ptr + at_mx % W)
    for x0 in range(0, W, BX):
        ox = x0 + tl.arange(0, BX)
        xm = ox < W
        g = tl.load(g_ptr + b * H * W + oy[:, None] * W + ox[None, :], mask=ym[:, None] & xm[None, :], other=0.0)
        if NORMALIZE:
            cx = tl.load(cx_ptr + ox, mask=xm, other=-1)
            held = (row_mn[:, None] & (cx == col_mn)[None, :]) | (row_mx[:, None] & (cx == col_mx)[None, :])
            g = tl.where(held, 0.0, g)
        ux = tl.where(xm[:, None], _row_weights(ox[:, None], rx, w, xx[None, :]), 0.0)  # [BX, WP]
        acc += tl.dot(g.to(tl.float32), ux, input_precision="ieee")
    uyt = tl.where(ym[None, :], _row_weights(oy[None, :], ry, h, yy[:, None]), 0.0)  # [HP, BY]
    band = tl.dot(uyt, acc, input_precision="ieee")  # [HP, WP]
    tl.store(band_ptr + ((b * T + t) * h + yy[:, None]) * w + xx[None, :], band,
             mask=(yy[:, None] < h) & (xx[None, :] < w))


@triton.jit
def finish(band_ptr, low_ptr, stat_ptr, idx_ptr, d_ptr, T, hw, h, w, H, W, ry, rx, scale, rel_eps,
           RELU: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_P: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    p = tl.arange(0, BLOCK_P)
    pm = p < hw
    m = tl.zeros([BLOCK_P], dtype=tl.float32)
    for t in range(0, T):
        m += tl.load(band_ptr + (b * T + t) * hw + p, mask=pm, other=0.0)
    r = tl.load(low_ptr + b * hw + p, mask=pm, other=0.0)
    if NORMALIZE:
        mn = tl.load(stat_ptr + 2 * b)
        mx = tl.load(stat_ptr + 2 * b + 1)
        rng = mx - mn
        ok = rng > rel_eps * tl.maximum(tl.abs(mn), tl.abs(mx))
        inv = tl.where(ok, 1.0 / tl.where(ok, rng, 1.0), 0.0)
        total = tl.sum(m, axis=0)
        p_out = inv * (tl.sum(m * r, axis=0) - mn * total)
        s_rest = total - p_out
        at_mn = tl.load(idx_ptr + 2 * b)
        at_mx = tl.load(idx_ptr + 2 * b + 1)
        py = p // w
        px = p % w
        u_mn = _row_weights(at_mn // W, ry, h, py) * _row_weights(at_mn % W, rx, w, px)
        u_mx = _row_weights(at_mx // W, ry, h, py) * _row_weights(at_mx % W, rx, w, px)
        m = tl.where(ok, inv * (m - s_rest * u_mn - p_out * u_mx), 0.0)  # constant (or NaN) map: no gradient
    if RELU:
        m = tl.where(r > 0.0, m, 0.0)
    tl.store(d_ptr + b * hw + p, m * scale, mask=pm)


@triton.jit
def input_grads_kernel(a_ptr, w_ptr, d_ptr, ga_ptr, gw_ptr, C, hw, w, CH, NP, sa_b, sa_c, sa_h, sa_w, sg_b, sg_c,
                       sg_h, sg_w, sw_b, sw_c, NEED_A: tl.constexpr, NEED_W: tl.constexpr, CLAMP: tl.constexpr,
                       EVEN_C: tl.constexpr, WIDE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """``ga[b, c, p] = w[b, c] · d[b, p]`` (in ``ga``'s dtype) and the partial sums
    ``gw[b, j, c] = Σ_{p in block j} A[b, c, p] · d[b, p]`` (float32) for one share of the channels
    of one sample. Positions are the outer loop (one block for maps up to ``BLOCK_P`` pixels), so
    the tile's offsets are computed once per block; as in the forward's channel sum, with
    ``CLAMP`` positions past ``h·w`` are clamped instead of masked (they store the value of the last
    position again, to the same address, and add nothing to ``gw``) and with ``EVEN_C`` no channel
    is masked."""
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    c_lo = s * CH
    c_hi = tl.minimum(c_lo + CH, C)
    a_b = a_ptr + b * sa_b
    g_b = ga_ptr + b * sg_b
    w_b = w_ptr + b * sw_b
    rows = tl.arange(0, BLOCK_C)
    if WIDE:
        rows = rows.to(tl.int64)
    for j in range(0, NP):
        p, pm, pc = _positions(j * BLOCK_P, hw, BLOCK_P, CLAMP, WIDE)
        if CLAMP:
            dv = tl.load(d_ptr + b * hw + pc)
        else:
            dv = tl.load(d_ptr + b * hw + pc, mask=pm, other=0.0)
        dw = tl.where(pm, dv, 0.0)
        a_offs = rows[:, None] * sa_c + ((pc // w) * sa_h + (pc % w) * sa_w)[None, :]
        g_offs = rows[:, None] * sg_c + ((pc // w) * sg_h + (pc % w) * sg_w)[None, :]
        for c0 in range(c_lo, c_hi, BLOCK_C):
            c64 = tl.cast(c0, tl.int64)
            g_t = g_b + c64 * sg_c  # per-tile base pointers: one multiply-add per element address
            a_t = a_b + c64 * sa_c
            if EVEN_C:
                wv = tl.load(w_b + (c0 + rows) * sw_c).to(tl.float32)
                m = pm[None, :]
            else:
                cm = c0 + rows < c_hi
                wv = tl.load(w_b + (c0 + rows) * sw_c, mask=cm, other=0.0).to(tl.float32)
                m = cm[:, None] & pm[None, :]
            if NEED_A:
                v = (wv[:, None] * dv[None, :]).to(ga_ptr.dtype.element_ty)
                if CLAMP and EVEN_C:
                    tl.store(g_t + g_offs, v)
                else:
                    tl.store(g_t + g_offs, v, mask=m)
            if NEED_W:
                if CLAMP and EVEN_C:
                    av = tl.load(a_t + a_offs)
                else:
                    av = tl.load(a_t + a_offs, mask=m, other=0.0)
                part = tl.sum(av.to(tl.float32) * dw[None, :], axis=1)
                tl.store(gw_ptr + (b * NP + j) * C + c0 + rows, part, mask=(c0 + rows) < c_hi)


@triton.jit
def input_grads_grouped_kernel(a_ptr, w_ptr, d_ptr, ga_ptr, gw_ptr, R, RH, C, NPB, sa_b, sw_b, sw_c,
                               HW: tl.constexpr, G: tl.constexpr, PACKED: tl.constexpr, NEED_A: tl.constexpr,
                               NEED_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr):
    """``input_grads_kernel`` over rows of ``G`` whole channels (as the forward's
    ``reduce_grouped_kernel``: 16-byte loads and stores where one channel's row is misaligned).
    Both products go through ``tl.dot`` with the fp32 factors split in two parts of the
    activations' 16-bit dtype (``x ≈ xh + xl``): ``d acts[r, j] = w[G·r + k]·d[p]``
    (``k = j // h·w``, ``p = j % h·w``) as ``[wh | wh | wl] · [dh·[k] ; dl·[k] ; dh·[k]]`` (one
    nonzero term per output, summed in fp32, rounded once on the store), and ``d w[G·r + k] =
    Σ_j A[r, j]·(dh + dl)[j]·[k]`` as two ``[BLOCK_R, BLOCK_P] x [BLOCK_P, 16]`` products (columns
    ``k < G``). Launched for 16-bit activations (fp32 would take ``tf32x3`` products, 4-19x the
    loop's instructions compiled for sm_90). ``gw`` holds one partial sum per column block:
    ``[B, NPB, C]``."""
    L: tl.constexpr = G * HW
    b = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    if PACKED:
        off_b = b * R * L
    else:
        off_b = b * sa_b
    a_b = a_ptr + off_b
    g_b = ga_ptr + off_b
    r_lo = s * RH
    r_hi = tl.minimum(r_lo + RH, R)
    t = tl.arange(0, 32)
    q = tl.arange(0, 16)
    for jb in range(0, NPB):
        j = jb * BLOCK_P + tl.arange(0, BLOCK_P)
        jm = j < L
        seg = j // HW
        dv = tl.load(d_ptr + b * HW + (j - seg * HW), mask=jm, other=0.0)
        dh = dv.to(a_ptr.dtype.element_ty)
        dl = (dv - dh.to(tl.float32)).to(a_ptr.dtype.element_ty)
        zero = tl.zeros_like(dh)
        if NEED_W:  # [BLOCK_P, 16]: column k holds d's part on segment k
            on = (seg[:, None] == q[None, :]) & jm[:, None]
            d_hi = tl.where(on, dh[:, None], zero[:, None])
            d_lo = tl.where(on, dl[:, None], zero[:, None])
        if NEED_A:  # [32, BLOCK_P]: rows k, G + k, 2G + k
            kk = t % G
            band = t // G
            sel = (seg[None, :] == kk[:, None]) & (band[:, None] < 3) & jm[None, :]
            d_k = tl.where(sel, tl.where((band == 1)[:, None], dl[None, :], dh[None, :]), zero[None, :])
        for r0 in range(r_lo, r_hi, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            rm = rs < r_hi
            offs = rs[:, None].to(tl.int64) * L + j[None, :]
            m = rm[:, None] & jm[None, :]
            if NEED_A:
                wv = tl.load(w_ptr + b * sw_b + (rs[:, None] * G + (t % G)[None, :]) * sw_c,
                             mask=rm[:, None] & (t < 3 * G)[None, :], other=0.0)  # [BLOCK_R, 32]
                wh = wv.to(a_ptr.dtype.element_ty)
                wl = (wv - wh.to(tl.float32)).to(a_ptr.dtype.element_ty)
                w_k = tl.where((t < 2 * G)[None, :], wh, wl)
                v = tl.dot(w_k, d_k)  # 16-bit operands: exact products, fp32 sums
                tl.store(g_b + offs, v.to(ga_ptr.dtype.element_ty), mask=m)
            if NEED_W:
                av = tl.load(a_b + offs, mask=m, other=0.0)
                part = tl.dot(av, d_hi) + tl.dot(av, d_lo)
                tl.store(gw_ptr + (b * NPB + jb) * C + rs[:, None] * G + q[None, :], part,
                         mask=rm[:, None] & (q < G)[None, :])


def grouped_rows(acts: Tensor) -> int:
    """The channels per row of :func:`input_grads_grouped_kernel` for ``acts``, or 0 where it does
    not apply: 16-bit activations (fp32 products through ``tl.dot`` need ``tf32x3``, 4-19x the
    instructions of the loop), each sample's channels contiguous (NCHW), and a whole-channel group
    that divides the channels (:func:`egl.kernels._cam_triton.channel_group`)."""
    from egl.kernels._cam_triton import channel_group

    _, c, h, w = acts.shape
    flat = acts.stride(3) == 1 and acts.stride(2) == w and acts.stride(1) == h * w
    return channel_group(c, h * w, 2) if flat and acts.element_size() == 2 else 0


def auto_grads(acts: Tensor) -> str:
    """``grads="auto"``'s choice for ``acts``: ``"grouped"`` on CUDA where
    :func:`grouped_rows` applies, ``"torch"`` elsewhere."""
    return "grouped" if acts.device.type == "cuda" and grouped_rows(acts) else "torch"


def input_grads(acts: Tensor, weights: Tensor, d: Tensor, needs: tuple[bool, bool], cfg: dict[str, Any]
                ) -> tuple[Tensor | None, Tensor | None]:
    """``(d acts, d w)`` from ``d [B, h·w]`` (float32): ``d acts`` like ``acts`` (dtype and layout),
    ``d w`` float32; ``None`` where not needed."""
    from egl.kernels._cam_triton import channel_split, tile_flags

    b, c, h, w = acts.shape
    hw = h * w
    ga = torch.empty_like(acts) if needs[0] else None
    group = grouped_rows(acts) if cfg["grads"] == "grouped" else 0
    if group and (ga is None or ga.stride() == acts.stride()):
        rows, row = c // group, group * hw
        block_p = max(16, min(_pow2(row), 256))
        block_r = max(16, min(_pow2(rows), cfg["reduce_tile"] // block_p))
        splits, rh = channel_split(b, rows, block_r, acts.device, cfg)
        n_p = _cdiv(row, block_p)
        gw = torch.empty(b, n_p, c, device=acts.device, dtype=torch.float32) if needs[1] else None
        input_grads_grouped_kernel[(b, splits)](
            acts, weights, d, ga if ga is not None else acts, gw if gw is not None else d, rows, rh, c, n_p,
            acts.stride(0), *weights.stride(), HW=hw, G=group, PACKED=b == 1 or acts.stride(0) == c * hw,
            NEED_A=needs[0], NEED_W=needs[1], BLOCK_R=block_r, BLOCK_P=block_p, num_warps=cfg["reduce_warps"])
        return ga, None if gw is None else gw.sum(1) if n_p > 1 else gw.view(b, c)
    block_p = min(_pow2(hw), 1024)
    n_p = _cdiv(hw, block_p)
    block_c = max(1, min(_pow2(c), cfg["reduce_tile"] // block_p))
    splits, ch = channel_split(b, c, block_c, acts.device, cfg)
    gw = torch.empty(b, n_p, c, device=acts.device, dtype=torch.float32) if needs[1] else None
    g = ga if ga is not None else acts
    input_grads_kernel[(b, splits)](acts, weights, d, g, gw if gw is not None else d, c, hw, w, ch, n_p,
                                    *acts.stride(), *g.stride(), *weights.stride(), NEED_A=needs[0],
                                    NEED_W=needs[1], **tile_flags((acts, g), block_c), BLOCK_C=block_c, BLOCK_P=block_p,
                                    num_warps=cfg["reduce_warps"])
    return ga, None if gw is None else gw.sum(1) if n_p > 1 else gw.view(b, c)


def grad_low(grad: Tensor, low: Tensor, stats: Tensor, argext: Tensor, hw_shape: tuple[int, int],
             size: tuple[int, int], scale: float, relu: bool, normalize: bool, rel_eps: float) -> Tensor:
    """``d [B, h·w]``: the gradient with respect to ``Σ_c w·A`` at feature resolution (fp32)."""
    h, w = hw_shape
    hh, ww = size
    b = grad.shape[0]
    grad = grad.contiguous()
    by, bx = 32, 64
    t = _cdiv(hh, by)
    band = torch.empty(b, t, h * w, device=grad.device, dtype=torch.float32)
    ry, rx = _ratio(h, hh), _ratio(w, ww)
    cy, cx = on_device("classes", h, hh, grad.device), on_device("classes", w, ww, grad.device)
    transpose_upsample[(b, t)](grad, band, argext, cy, cx, h, w, hh, ww, ry, rx, t, NORMALIZE=normalize, BY=by,
                               BX=bx, HP=max(16, _pow2(h)), WP=max(16, _pow2(w)))
    d = torch.empty(b, h * w, device=grad.device, dtype=torch.float32)
    finish[(b,)](band, low, stats, argext, d, t, h * w, h, w, hh, ww, ry, rx, float(scale), float(rel_eps),
                 RELU=relu, NORMALIZE=normalize, BLOCK_P=max(16, _pow2(h * w)))
    return d
