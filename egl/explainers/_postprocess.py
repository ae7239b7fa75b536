"""Saliency post-processing shared by every explainer: upsampling and min-max normalisation.

Order (see ``shared/METHODS.md``): ReLU (done by the explainer), bilinear upsampling with
``align_corners=False``, then per-sample min-max normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from egl._check import check_size

__all__ = ["minmax_normalize", "upsample", "finalize", "REL_EPS"]

#: A map whose range is below ``REL_EPS`` times its largest magnitude is treated as constant.
#: Relative, not absolute: raw maps of an untrained network can span only 1e-5.
REL_EPS = 1e-6


def minmax_normalize(x: Tensor, rel_eps: float = REL_EPS, *, src_size: tuple[int, int] | None = None) -> Tensor:
    """Per-sample min-max normalisation to [0, 1]; a constant sample becomes all zeros.

    Differentiable, never NaN: the division only happens where the range is
    meaningful (``max - min > rel_eps * max(|min|, |max|)``).

    ``src_size``: when ``x`` is ``[B, C, H, W]`` maps bilinearly upsampled (``align_corners=False``)
    from ``src_size``, the outputs that hold a sample's minimum or maximum pass no gradient back:
    those equal to it, and those that copy its source pixel (:func:`egl.kernels._bilinear.pinned`: a
    2 x 2 map upsampled to 64 px copies each corner into a 16 x 16 block, whose values float rounding
    leaves a unit in the last place apart). They are 0 or 1 whatever the map, so their derivative is
    zero; autograd would send each one's gradient (``1/eps`` under BCE) to its source pixel twice,
    with opposite signs, cancelling only to rounding: float32 alignment gradients on 2 x 2 maps were
    1-4% off float64 (``docs/explainers.md``, "Precision"). The Triton backward does the same for the
    copies; in 16-bit maps only copies are held (rounding puts many outputs on an extreme). Outputs
    tied with an extreme by coincidence get zero, one valid choice where the map is not
    differentiable. Without ``src_size`` (or at the source size) the gradient is autograd's: a map at
    its own resolution holds each extreme on one pixel or a few.

    Shape:
        x: ``B *``; returns the same shape.
    """
    if src_size is not None:
        src_size = check_size(src_size, "egl.explainers.minmax_normalize", "src_size")
    flat = x.flatten(1)
    hold = (src_size is not None and x.dim() == 4 and tuple(src_size) != tuple(x.shape[-2:])
            and torch.is_grad_enabled() and x.requires_grad)
    if hold:
        lo, at_lo = flat.min(dim=1)
        hi, at_hi = flat.max(dim=1)
    else:
        lo, hi = flat.amin(dim=1), flat.amax(dim=1)
    rng = hi - lo
    ok = rng > rel_eps * torch.maximum(hi.abs(), lo.abs())
    view = (-1,) + (1,) * (x.dim() - 1)
    safe = torch.where(ok, rng, torch.ones_like(rng)).view(view)
    out = (x - lo.view(view)) / safe
    if hold:
        from egl.kernels._bilinear import pinned  # lazy: egl.kernels imports egl.explainers lazily

        with torch.no_grad():
            shape = (x.shape[1], x.shape[2], x.shape[3])
            held = pinned(at_lo, shape, src_size) | pinned(at_hi, shape, src_size)
            if x.dtype in (torch.float32, torch.float64):  # (a 16-bit map rounds many outputs onto its extremes)
                held |= ((flat == lo.unsqueeze(1)) | (flat == hi.unsqueeze(1))).view_as(held)
        out = torch.where(held.view_as(x), out.detach(), out)
    return torch.where(ok.view(view), out, torch.zeros_like(out))


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[B, C, h, w]`` maps to ``size`` (``align_corners=False``); no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def finalize(saliency: Tensor, size: tuple[int, int] | None, normalize: bool) -> Tensor:
    """Upsample (when ``size`` is given) then normalise (when ``normalize``) ``[B, 1, h, w]`` maps."""
    src = tuple(saliency.shape[-2:])
    if size is not None:
        saliency = upsample(saliency, size)
    return minmax_normalize(saliency, src_size=src) if normalize else saliency
