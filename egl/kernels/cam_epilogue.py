"""The Grad-CAM epilogue for a whole batch, fused: class-weighted channel sum, ReLU, scale,
bilinear upsampling to the input size and per-sample min-max normalisation.

``out[b] = minmax(upsample(relu(scale · Σ_c w[b, c] · A[b, c])))``

Every Grad-CAM path ends here: the closed form (``w = W[y]``, ``scale = 1/(h·w)``), the
pooled path (``w`` = the head's gradient) and the autograd path (``w`` = mean gradients).

Backends (``backend="auto"``): a Triton kernel when the activations are on a CUDA device
and Triton is installed, otherwise the PyTorch reference (identical maths). The Triton
kernel runs one program per sample: it reduces channels into the low-resolution map,
upsamples it (bilinear, ``align_corners=False``, exactly PyTorch's source-index rule)
while tracking the minimum and maximum, then normalises in place with the same
range-relative epsilon as :func:`egl.explainers.minmax_normalize`. Its backward
recomputes the epilogue with PyTorch ops and differentiates that (the epilogue is cheap
next to the network; recomputation keeps the forward free of saved intermediates).
With ``TRITON_INTERPRET=1`` the kernel also runs on CPU tensors, which is how CI tests it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from egl._check import check_choice, check_shape, fail

__all__ = ["cam_epilogue", "cam_epilogue_reference", "triton_available"]

BACKENDS = ("auto", "torch", "triton")


def triton_available() -> bool:
    """Triton can be imported (it ships with CUDA builds of PyTorch)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any import problem means "not available"
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def cam_epilogue_reference(acts: Tensor, weights: Tensor, size: tuple[int, int] | None, *, scale: float = 1.0,
                           relu: bool = True, normalize: bool = True) -> Tensor:
    """The PyTorch reference of :func:`cam_epilogue` (and its fallback)."""
    from egl.explainers._postprocess import minmax_normalize  # lazy: egl.explainers imports this module
    raw = torch.einsum("bc,bchw->bhw", weights.to(acts.dtype), acts).unsqueeze(1) * scale
    if relu:
        raw = torch.relu(raw)
    if size is not None and tuple(raw.shape[-2:]) != tuple(size):
        raw = F.interpolate(raw, size=tuple(size), mode="bilinear", align_corners=False)
    return minmax_normalize(raw) if normalize else raw


def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def cam_fwd(a_ptr, w_ptr, low_ptr, out_ptr, C, h, w, H, W, scale, rel_eps,
                sa_b, sa_c, sa_h, sa_w, sw_b, sw_c,
                RELU: tl.constexpr, NORMALIZE: tl.constexpr,
                BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_O: tl.constexpr):
        b = tl.program_id(0).to(tl.int64)
        p = tl.arange(0, BLOCK_P)
        pm = p < h * w
        py = p // w
        px = p % w
        acc = tl.zeros([BLOCK_P], dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            cm = cs < C
            wv = tl.load(w_ptr + b * sw_b + cs * sw_c, mask=cm, other=0.0).to(tl.float32)
            av = tl.load(a_ptr + b * sa_b + cs[:, None] * sa_c + py[None, :] * sa_h + px[None, :] * sa_w,
                         mask=cm[:, None] & pm[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(wv[:, None] * av, axis=0)
        acc = acc * scale
        if RELU:
            acc = tl.maximum(acc, 0.0)
        tl.store(low_ptr + b * h * w + p, acc, mask=pm)
        tl.debug_barrier()
        n_out = H * W
        ry = h.to(tl.float32) / H
        rx = w.to(tl.float32) / W
        vmin = tl.full([BLOCK_O], float("inf"), tl.float32)
        vmax = tl.full([BLOCK_O], float("-inf"), tl.float32)
        for o0 in range(0, n_out, BLOCK_O):
            o = o0 + tl.arange(0, BLOCK_O)
            om = o < n_out
            sy = tl.maximum((o // W).to(tl.float32) * ry + 0.5 * ry - 0.5, 0.0)
            sx = tl.maximum((o % W).to(tl.float32) * rx + 0.5 * rx - 0.5, 0.0)
            y0 = tl.minimum(sy.to(tl.int32), h - 1)
            x0 = tl.minimum(sx.to(tl.int32), w - 1)
            y1 = tl.minimum(y0 + 1, h - 1)
            x1 = tl.minimum(x0 + 1, w - 1)
            ly = sy - y0.to(tl.float32)
            lx = sx - x0.to(tl.float32)
            base = low_ptr + b * h * w
            v00 = tl.load(base + y0 * w + x0, mask=om, other=0.0)
            v01 = tl.load(base + y0 * w + x1, mask=om, other=0.0)
            v10 = tl.load(base + y1 * w + x0, mask=om, other=0.0)
            v11 = tl.load(base + y1 * w + x1, mask=om, other=0.0)
            val = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
            tl.store(out_ptr + b * n_out + o, val, mask=om)
            vmin = tl.minimum(vmin, tl.where(om, val, float("inf")))
            vmax = tl.maximum(vmax, tl.where(om, val, float("-inf")))
        if NORMALIZE:
            mn = tl.min(vmin, axis=0)
            mx = tl.max(vmax, axis=0)
            rng = mx - mn
            ok = rng > rel_eps * tl.maximum(tl.abs(mn), tl.abs(mx))
            inv = 1.0 / tl.where(ok, rng, 1.0)
            tl.debug_barrier()
            for o0 in range(0, n_out, BLOCK_O):
                o = o0 + tl.arange(0, BLOCK_O)
                om = o < n_out
                v = tl.load(out_ptr + b * n_out + o, mask=om, other=0.0)
                v = tl.where(ok, (v - mn) * inv, 0.0)
                tl.store(out_ptr + b * n_out + o, v, mask=om)

    return cam_fwd


_KERNEL: Any = None


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _triton_forward(acts: Tensor, weights: Tensor, size: tuple[int, int], scale: float, relu: bool,
                    normalize: bool) -> Tensor:
    from egl.explainers._postprocess import REL_EPS

    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    b, c, h, w = acts.shape
    hh, ww = size
    if h * w > 4096:
        raise fail("egl.kernels.cam_epilogue", "acts", "feature maps of at most 4096 positions for the Triton kernel",
                   f"{h}x{w}", "Use backend='torch' for larger maps")
    low = torch.empty(b, h * w, device=acts.device, dtype=torch.float32)
    out = torch.empty(b, 1, hh, ww, device=acts.device, dtype=torch.float32)
    block_p = _next_pow2(h * w)
    block_c = max(1, min(_next_pow2(c), 8192 // block_p))
    _KERNEL[(b,)](acts, weights, low, out, c, h, w, hh, ww, float(scale), float(REL_EPS),
                  *acts.stride(), *weights.stride(), RELU=relu, NORMALIZE=normalize,
                  BLOCK_C=block_c, BLOCK_P=block_p, BLOCK_O=1024)
    return out


class _FusedEpilogue(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, acts: Tensor, weights: Tensor, size: tuple[int, int], scale: float, relu: bool,
                normalize: bool) -> Tensor:
        ctx.save_for_backward(acts, weights)
        ctx.args = (size, scale, relu, normalize)
        return _triton_forward(acts, weights, size, scale, relu, normalize)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        acts, weights = ctx.saved_tensors
        size, scale, relu, normalize = ctx.args
        with torch.enable_grad():
            a = acts.detach().requires_grad_(ctx.needs_input_grad[0])
            wt = weights.detach().requires_grad_(ctx.needs_input_grad[1])
            out = cam_epilogue_reference(a, wt, size, scale=scale, relu=relu, normalize=normalize)
            inputs = [t for t in (a, wt) if t.requires_grad]
            grads = iter(torch.autograd.grad(out, inputs, grad, allow_unused=True))
        ga = next(grads) if ctx.needs_input_grad[0] else None
        gw = next(grads) if ctx.needs_input_grad[1] else None
        return ga, gw, None, None, None, None


def cam_epilogue(acts: Tensor, weights: Tensor, size: tuple[int, int] | None = None, *, scale: float = 1.0,
                 relu: bool = True, normalize: bool = True, backend: str = "auto") -> Tensor:
    """Fused Grad-CAM epilogue for a batch.

    Args:
        acts: activations ``A``.
        weights: channel weights per sample (``W[y]``, head gradients, or mean gradients).
        size: output size ``(H, W)``; ``None`` keeps the feature resolution.
        scale: multiplies the weighted sum before the ReLU (``1/(h·w)`` for the closed form).
        relu: apply the ReLU. normalize: per-sample min-max with a range-relative epsilon.
        backend: ``"auto"`` (Triton on CUDA when available, else PyTorch), ``"torch"`` or ``"triton"``.

    Returns:
        ``[B, 1, H, W]`` float32 maps; differentiable with respect to ``acts`` and ``weights``.

    Shape:
        acts: ``B C h w``; weights: ``B C``.
    """
    fn = "egl.kernels.cam_epilogue"
    check_choice(backend, BACKENDS, fn, "backend")
    check_shape(acts, "B C H W", fn, "acts")
    check_shape(weights, "B C", fn, "weights")
    if weights.shape != acts.shape[:2]:
        raise fail(fn, "weights", f"shape {list(acts.shape[:2])} (batch, channels of 'acts')",
                   f"{list(weights.shape)}", "Pass one weight per channel and sample")
    use_triton = backend == "triton" or (backend == "auto" and acts.is_cuda and triton_available())
    if backend == "triton" and not triton_available():
        raise fail(fn, "backend", "'triton' only where Triton is installed", "'triton'", "Use backend='auto'")
    if backend == "triton" and not acts.is_cuda and not _interpreting():
        raise fail(fn, "backend", "'triton' on CUDA tensors (or with TRITON_INTERPRET=1)",
                   f"tensors on {acts.device}", "Use backend='auto' on CPU")
    if not use_triton:
        return cam_epilogue_reference(acts, weights, size, scale=scale, relu=relu, normalize=normalize)
    out_size = tuple(size) if size is not None else tuple(acts.shape[-2:])
    return _FusedEpilogue.apply(acts, weights, out_size, scale, relu, normalize)
