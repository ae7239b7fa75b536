"""The Triton kernels of the epilogue's analytic backward (see ``cam_epilogue._backward``).

1. ``transpose_upsample``: grid ``(B, ⌈H/BY⌉)``; ``M_t = U_yᵀ[:, rows] · G[rows, :] · U_x`` for
   one band of output rows, as two small matrix products on tiles whose interpolation weights
   are built in registers; the incoming gradient ``G`` is read once.
2. ``finish``: grid ``(B,)``; sums the bands, applies the min/max terms, the ReLU mask and the
   scale, and writes ``d [B, h·w]``, from which ``d acts = w ⊗ d`` and ``d w = acts · d``.

Used when the feature map is at most 64 x 64 (the interpolation tiles stay in registers);
larger maps take the PyTorch formulation of the same maths. Imported only when Triton runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from egl.kernels._cam_triton import _cdiv, _pow2, _ratio, _src

__all__ = ["grad_low", "supported"]

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
def transpose_upsample(g_ptr, band_ptr, h, w, H, W, ry, rx, T,
                       BY: tl.constexpr, BX: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    oy = t * BY + tl.arange(0, BY)
    ym = oy < H
    yy = tl.arange(0, HP)
    xx = tl.arange(0, WP)
    acc = tl.zeros([BY, WP], dtype=tl.float32)
    for x0 in range(0, W, BX):
        ox = x0 + tl.arange(0, BX)
        xm = ox < W
        g = tl.load(g_ptr + b * H * W + oy[:, None] * W + ox[None, :], mask=ym[:, None] & xm[None, :], other=0.0)
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
    transpose_upsample[(b, t)](grad, band, h, w, hh, ww, ry, rx, t, BY=by, BX=bx, HP=max(16, _pow2(h)),
                               WP=max(16, _pow2(w)))
    d = torch.empty(b, h * w, device=grad.device, dtype=torch.float32)
    finish[(b,)](band, low, stats, argext, d, t, h * w, h, w, hh, ww, ry, rx, float(scale), float(rel_eps),
                 RELU=relu, NORMALIZE=normalize, BLOCK_P=max(16, _pow2(h * w)))
    return d
