"""The Grad-CAM epilogue for a whole batch, fused: class-weighted channel sum, ReLU, scale,
bilinear upsampling to the input size and per-sample min-max normalisation.

``out[b] = minmax(upsample(relu(scale · Σ_c w[b, c] · A[b, c])))``

Every Grad-CAM path ends here: the closed form (``w = W[y]``, ``scale = 1/(h·w)``), the
pooled path (``w`` = the head's gradient) and the autograd path (``w`` = mean gradients).

Backends (``backend="auto"``): the Triton kernels of :mod:`egl.kernels._cam_triton` when the
activations are on a CUDA device and Triton is installed, otherwise the PyTorch reference
(identical maths). The Triton forward reads the activations once and writes the maps once
(channel-split reduction, then min/max from the few rows and columns where an upsampled map
can peak, then one normalising store per pixel); it uses the same bilinear source-index rule
as PyTorch (``align_corners=False``) and the same range-relative epsilon as
:func:`egl.explainers.minmax_normalize`. Its backward is analytic (:func:`_backward`): the
incoming gradient is read once, reduced through the transposed interpolation, and the
gradients of the activations and weights are one outer product and one batched matrix-vector
product. With ``TRITON_INTERPRET=1`` the kernels also run on CPU tensors, which is how CI
tests them.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from egl._amp import no_autocast
from egl._check import check_choice, check_shape, check_size, fail
from egl.kernels._device import device_of

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


#: why the Triton kernels were given up for this process (``None`` while they work)
_TRITON_FAILED: str | None = None


def _give_up_triton(err: Exception) -> None:
    """After a Triton kernel failed (a compiler or resource error with an untested Triton
    version, say): warn once and let ``backend="auto"`` use the PyTorch formulation from now on."""
    global _TRITON_FAILED
    if _TRITON_FAILED is None:
        first = str(err).splitlines()[0][:200] if str(err) else ""
        _TRITON_FAILED = f"{type(err).__name__}: {first}"
        warnings.warn(f"egl.kernels.cam_epilogue: the Triton kernels failed ({_TRITON_FAILED}); using the PyTorch "
                      "formulation of the same maths from now on (slower, same results). Please report it with "
                      "your torch and Triton versions; backend='triton' raises the error instead.", RuntimeWarning,
                      stacklevel=3)


def _may_fall_back(err: Exception, fallback: bool, acts: Tensor) -> bool:
    """Whether a failed Triton call may give the kernels up (``backend="auto"``): not when memory
    ran out (not the kernels' fault), nor inside a CUDA graph capture (the capture is invalid
    after the failure whatever runs next; the capturer reports it, e.g.
    :class:`egl.explainers.GraphedExplainer`, and the kernels stay in use for eager calls)."""
    if not fallback or isinstance(err, torch.OutOfMemoryError):
        return False
    return not capturing(acts)


def capturing(t: Tensor) -> bool:
    """Whether ``t``'s device is capturing a CUDA graph on its current stream."""
    if not t.is_cuda:
        return False
    with torch.cuda.device(t.device):
        return torch.cuda.is_current_stream_capturing()


def cam_epilogue_reference(acts: Tensor, weights: Tensor, size: tuple[int, int] | None, *, scale: float = 1.0,
                           relu: bool = True, normalize: bool = True) -> Tensor:
    """The PyTorch reference of :func:`cam_epilogue` (and its fallback)."""
    from egl.explainers._postprocess import minmax_normalize  # lazy: egl.explainers imports this module
    # In float32 at least (float64 stays float64), autocast off, as the Triton kernels sum: float32
    # weights below float16's range (loss-scaled inner gradients) survive, and the map is not
    # quantised. A 16-bit map is quantised to 1/256 near its maximum (bfloat16), and a loss like
    # BCE, steep where the map is exactly 0 or 1, then meets many such pixels whose large
    # gradients cancel through the min-max only to that precision: ALIGN's alignment gradients
    # came out 100x too large (tests/unit/kernels/test_cam_epilogue.py). Costs a float32 copy of
    # 16-bit activations, on this (CPU / fallback) path only.
    dt = torch.promote_types(acts.dtype, torch.float32)
    with no_autocast(acts.device.type):
        raw = torch.einsum("bc,bchw->bhw", weights.to(dt), acts.to(dt)).unsqueeze(1) * scale
        if relu:
            raw = torch.relu(raw)
        src = tuple(raw.shape[-2:])
        if size is not None and src != tuple(size):
            raw = F.interpolate(raw, size=tuple(size), mode="bilinear", align_corners=False)
        return minmax_normalize(raw, src_size=src) if normalize else raw


def _grad_low_torch(grad: Tensor, low: Tensor, stats: Tensor, argext: Tensor, hw_shape: tuple[int, int],
                    size: tuple[int, int], scale: float, relu: bool, normalize: bool, rel_eps: float) -> Tensor:
    """``d [B, h·w]`` in PyTorch ops: the same maths as the Triton backward, for any map size."""
    from egl.kernels._bilinear import interp_matrix, pinned

    h, w = hw_shape
    hh, ww = size
    b = grad.shape[0]
    dev = grad.device
    uy, ux = interp_matrix(h, hh, dev), interp_matrix(w, ww, dev)
    g = grad.reshape(b, hh, ww).float()
    if normalize:  # outputs copying an extreme's source pixel are 0 or 1 identically: no gradient
        held = pinned(argext[:, 0], (1, hh, ww), (h, w)) | pinned(argext[:, 1], (1, hh, ww), (h, w))
        g = g.masked_fill(held.view(b, hh, ww), 0.0)
    m = uy.t() @ (g @ ux)  # [B, h, w]
    r = low.view(b, h, w)
    if normalize:
        mn, mx = stats[:, 0], stats[:, 1]
        rng = mx - mn
        ok = rng > rel_eps * torch.maximum(mn.abs(), mx.abs())
        inv = torch.where(ok, 1.0 / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(rng))
        total = m.sum((1, 2))
        p_out = inv * ((m * r).sum((1, 2)) - mn * total)
        s_rest = total - p_out
        at = argext.long()
        u_min = uy[at[:, 0] // ww].unsqueeze(2) * ux[at[:, 0] % ww].unsqueeze(1)
        u_max = uy[at[:, 1] // ww].unsqueeze(2) * ux[at[:, 1] % ww].unsqueeze(1)
        m = inv.view(b, 1, 1) * (m - s_rest.view(b, 1, 1) * u_min - p_out.view(b, 1, 1) * u_max)
        m = torch.where(ok.view(b, 1, 1), m, torch.zeros_like(m))  # constant (or NaN) map: no gradient
    if relu:
        m = m * (r > 0)
    return (m * scale).view(b, h * w)


def _backward(grad: Tensor, acts: Tensor, weights: Tensor, low: Tensor, stats: Tensor, argext: Tensor,
              size: tuple[int, int], scale: float, relu: bool, normalize: bool,
              needs: tuple[bool, bool], fallback: bool = False) -> tuple[Tensor | None, Tensor | None]:
    """Analytic gradient of the epilogue; moves ``grad`` once, ``acts`` once and ``d acts`` once.

    With ``v = U r`` the upsampled map (``U = U_y ⊗ U_x``), ``r`` the low-resolution map and
    ``out = (v - mn)/(mx - mn)``, everything ``grad`` contributes goes through ``M = Uᵀ grad``:
    ``Σ grad = Σ M`` (rows of ``U`` sum to one), ``Σ grad·v = <M, r>``, so ``P = Σ grad·out``
    and ``S = Σ grad - P`` are sums over ``h·w`` values, and
    ``dr = (M - S·u_min - P·u_max) / (mx - mn)``, where ``u_min``/``u_max`` are the
    interpolation weights of the pixels holding the minimum and maximum (on ties, the first
    such pixel; tied pixels drawn from the same source pixels get the same gradient either way).
    With normalisation, ``grad`` is first zeroed at the outputs that copy the source pixel of the
    minimum or maximum (:func:`egl.kernels._bilinear.pinned`): they are 0 or 1 whatever the map, and
    their large loss gradients would otherwise cancel through ``S`` and ``P`` only to rounding.
    ``M`` and ``dr`` come from two Triton kernels (:mod:`egl.kernels._cam_triton_backward`) for
    maps up to 64 x 64, else from PyTorch ops; ``d acts = w ⊗ d`` and ``d w = acts · d`` come
    from one broadcast product and one batched matrix-vector product (``_cam_triton.CONFIG["grads"]
    == "torch"``) or from one Triton pass over the activations (``"grouped"``: rows of whole
    channels, 16-bit activations; ``"triton"``: one channel a row; float32 sums, ``d acts``
    rounded once to the activations' dtype). The default ``"auto"`` takes ``"grouped"`` for
    16-bit NCHW activations on CUDA and ``"torch"`` elsewhere, the faster of the two on an H200. With ``fallback``
    (``backend="auto"``) a Triton kernel that fails gives way to the PyTorch ops.
    """
    from egl.explainers._postprocess import REL_EPS
    from egl.kernels import _cam_triton_backward

    from egl.kernels._cam_triton import CONFIG, GRADS

    check_choice(CONFIG["grads"], GRADS, "egl.kernels._cam_triton", "config['grads']")
    h, w = acts.shape[-2:]
    args = (low, stats, argext, (h, w), size, scale, relu, normalize, REL_EPS)
    with torch.autocast(acts.device.type, enabled=False):
        d = None
        if (_TRITON_FAILED is None or not fallback) and _cam_triton_backward.supported(h, w):
            try:
                d = _cam_triton_backward.grad_low(grad, *args)
            except Exception as err:  # noqa: BLE001 - see _give_up_triton
                if not _may_fall_back(err, fallback, acts):
                    raise
                _give_up_triton(err)
        if d is None:
            d = _grad_low_torch(grad, *args)
        mode = _cam_triton_backward.auto_grads(acts) if CONFIG["grads"] == "auto" else CONFIG["grads"]
        if mode in ("triton", "grouped") and (_TRITON_FAILED is None or not fallback):  # one pass
            try:
                ga, gw32 = _cam_triton_backward.input_grads(acts, weights, d, needs, {**CONFIG, "grads": mode})
                return ga, None if gw32 is None else gw32.to(weights.dtype)
            except Exception as err:  # noqa: BLE001 - see _give_up_triton
                if not _may_fall_back(err, fallback, acts):
                    raise
                _give_up_triton(err)
        return _input_grads_torch(acts, weights, d, needs)  # autocast off: the sums stay float32


def hi_lo(x: Tensor, dtype: torch.dtype, dim: int) -> Tensor:
    """Float32 ``x`` as two ``dtype`` parts concatenated along ``dim``, ``x ≈ hi + lo`` (about 16
    mantissa bits from two bf16 parts): a 16-bit matrix product with float32 output then sums
    with nearly fp32 operands at no extra pass over the other, larger operand."""
    hi = x.to(dtype)
    return torch.cat([hi, (x - hi.float()).to(dtype)], dim=dim)


def _input_grads_torch(acts: Tensor, weights: Tensor, d: Tensor,
                       needs: tuple[bool, bool]) -> tuple[Tensor | None, Tensor | None]:
    """``d acts = w ⊗ d`` and ``d w = acts · d`` (``d``: float32 ``[B, h·w]``) with PyTorch ops.

    ``d acts`` is formed in float32 and rounded once, on its write, to the activations' dtype and
    layout (``out=`` casts). ``d w`` sums in float32: on CUDA (NCHW or channels-last) one batched
    matrix product with float32 output, where ``d`` of 16-bit activations enters as two 16-bit
    rows ``hi + lo`` (about 16 mantissa bits, summed after); elsewhere (CPU, other layouts) the
    activations are converted to float32.
    """
    b, c, h, w = acts.shape
    ga = gw = None
    if needs[0]:
        ga = torch.empty_like(acts)  # the activations' layout (channels-last stays channels-last)
        torch.mul(weights.float().view(b, c, 1, 1), d.float().view(b, 1, h, w), out=ga)
    if needs[1]:
        flat = acts.stride(3) == 1 and acts.stride(2) == w
        nhwc = acts.is_contiguous(memory_format=torch.channels_last)
        if acts.is_cuda and (flat or nhwc):
            drow = d.float().unsqueeze(1)  # [B, 1, h·w]
            if acts.dtype != torch.float32:
                drow = hi_lo(drow, acts.dtype, 1)  # [B, 2, h·w]
            if flat:
                gw = torch.bmm(acts.reshape(b, c, h * w), drow.transpose(1, 2), out_dtype=torch.float32).sum(2)
            else:  # channels-last: the [B, h·w, C] view, no copy
                gw = torch.bmm(drow, acts.permute(0, 2, 3, 1).reshape(b, h * w, c), out_dtype=torch.float32).sum(1)
        else:
            gw = torch.einsum("bchw,bhw->bc", acts.float(), d.float().view(b, h, w))
        gw = gw.to(weights.dtype)
    return ga, gw


class _FusedEpilogue(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, acts: Tensor, weights: Tensor, size: tuple[int, int], scale: float, relu: bool,
                normalize: bool, fallback: bool) -> Tensor:
        from egl.explainers._postprocess import REL_EPS
        from egl.kernels import _cam_triton

        out, low, stats, argext = _cam_triton.forward(acts, weights, size, scale, relu, normalize, REL_EPS)
        ctx.save_for_backward(acts, weights, low, stats, argext)
        ctx.args = (size, scale, relu, normalize)
        ctx.fallback = fallback
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Any:
        acts, weights, low, stats, argext = ctx.saved_tensors
        ga, gw = _backward(grad, acts, weights, low, stats, argext, *ctx.args, needs=ctx.needs_input_grad[:2],
                           fallback=ctx.fallback)
        return ga, gw, None, None, None, None, None


def _auto_uses_triton(acts: Tensor) -> bool:
    """``backend="auto"``: the Triton kernels for CUDA tensors, while they work in this process."""
    return acts.is_cuda and triton_available() and _TRITON_FAILED is None


def cam_epilogue(acts: Tensor, weights: Tensor, size: tuple[int, int] | None = None, *, scale: float = 1.0,
                 relu: bool = True, normalize: bool = True, backend: str = "auto") -> Tensor:
    """Fused Grad-CAM epilogue for a batch.

    Args:
        acts: activations ``A``.
        weights: channel weights per sample (``W[y]``, head gradients, or mean gradients).
        size: output size ``(H, W)``; ``None`` keeps the feature resolution.
        scale: multiplies the weighted sum before the ReLU (``1/(h·w)`` for the closed form).
        relu: apply the ReLU. normalize: per-sample min-max with a range-relative epsilon.
        backend: ``"auto"`` (Triton on CUDA when available, else PyTorch; if a Triton kernel fails,
            one warning and PyTorch from then on), ``"torch"`` or ``"triton"`` (errors raised).

    Returns:
        ``[B, 1, H, W]`` float32 maps; differentiable with respect to ``acts`` and ``weights``.

    Shape:
        acts: ``B C h w``; weights: ``B C``.
    """
    fn = "egl.kernels.cam_epilogue"
    check_choice(backend, BACKENDS, fn, "backend")
    check_shape(acts, "B C H W", fn, "acts")
    check_shape(weights, "B C", fn, "weights")
    if acts.shape[-2] == 0 or acts.shape[-1] == 0:
        raise fail(fn, "acts", "a feature map of at least 1 x 1", f"shape {list(acts.shape)}",
                   "Pick a target layer whose output keeps spatial positions at this input size")
    if size is not None:  # (Python ints: a NumPy int or a 0-D tensor is no Triton launch argument)
        size = check_size(size, fn)
    if weights.shape != acts.shape[:2]:
        raise fail(fn, "weights", f"shape {list(acts.shape[:2])} (batch, channels of 'acts')",
                   f"{list(weights.shape)}", "Pass one weight per channel and sample")
    use_triton = backend == "triton" or (backend == "auto" and _auto_uses_triton(acts))
    if backend == "triton" and not triton_available():
        raise fail(fn, "backend", "'triton' only where Triton is installed", "'triton'", "Use backend='auto'")
    if backend == "triton" and not acts.is_cuda and not _interpreting():
        raise fail(fn, "backend", "'triton' on CUDA tensors (or with TRITON_INTERPRET=1)",
                   f"tensors on {acts.device}", "Use backend='auto' on CPU")
    if not use_triton or acts.shape[0] == 0 or acts.shape[1] == 0:  # empty batch or no channels: no kernel
        return cam_epilogue_reference(acts, weights, size, scale=scale, relu=relu, normalize=normalize)
    out_size = tuple(size) if size is not None else tuple(acts.shape[-2:])
    fallback = backend == "auto"
    try:
        with device_of(acts):  # (Triton launches on the current device; autograd's backward sets it itself)
            if not (torch.is_grad_enabled() and (acts.requires_grad or weights.requires_grad)):  # inference: no node
                from egl.explainers._postprocess import REL_EPS
                from egl.kernels import _cam_triton

                return _cam_triton.forward(acts, weights, out_size, scale, relu, normalize, REL_EPS)[0]
            return _FusedEpilogue.apply(acts, weights, out_size, scale, relu, normalize, fallback)
    except Exception as err:  # noqa: BLE001 - a kernel that does not build here: see _give_up_triton
        if not _may_fall_back(err, fallback, acts):
            raise
        _give_up_triton(err)
        return cam_epilogue_reference(acts, weights, size, scale=scale, relu=relu, normalize=normalize)
