"""Saliency post-processing shared by every explainer: upsampling and min-max normalisation.

Order (see ``shared/METHODS.md``): ReLU (done by the explainer), bilinear upsampling with
``align_corners=False``, then per-sample min-max normalisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["minmax_normalize", "upsample", "finalize", "REL_EPS"]

#: A map whose range is below ``REL_EPS`` times its largest magnitude is treated as constant.
#: Relative, not absolute: raw maps of an untrained network can span only 1e-5.
REL_EPS = 1e-6


def minmax_normalize(x: Tensor, rel_eps: float = REL_EPS) -> Tensor:
    """Per-sample min-max normalisation to [0, 1]; a constant sample becomes all zeros.

    Differentiable, never NaN: the division only happens where the range is
    meaningful (``max - min > rel_eps * max(|min|, |max|)``).

    Shape:
        x: ``B *``; returns the same shape.
    """
    flat = x.flatten(1)
    lo = flat.amin(dim=1)
    hi = flat.amax(dim=1)
    rng = hi - lo
    ok = rng > rel_eps * torch.maximum(hi.abs(), lo.abs())
    view = (-1,) + (1,) * (x.dim() - 1)
    safe = torch.where(ok, rng, torch.ones_like(rng)).view(view)
    out = (x - lo.view(view)) / safe
    return torch.where(ok.view(view), out, torch.zeros_like(out))


def upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[B, C, h, w]`` maps to ``size`` (``align_corners=False``); no-op if equal."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def finalize(saliency: Tensor, size: tuple[int, int] | None, normalize: bool) -> Tensor:
    """Upsample (when ``size`` is given) then normalise (when ``normalize``) ``[B, 1, h, w]`` maps."""
    if size is not None:
        saliency = upsample(saliency, size)
    return minmax_normalize(saliency) if normalize else saliency
