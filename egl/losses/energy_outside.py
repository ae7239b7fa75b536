"""Share of Grad-CAM energy outside the mask, over every class and both signs.

The paper's loss (BCE between the true class's ReLU Grad-CAM and the mask) only sees
*positive* evidence for the *true* class: a model can point at the object in that map
while deciding by the background through negative evidence or through other classes'
maps. This loss looks at the absolute, signed Grad-CAM of all classes:

``L = Σ_k Σ_ij |G_k[i,j]| (1 − M[i,j]) / Σ_k Σ_ij |G_k[i,j]|``  (per sample, in [0, 1])

It is 0 when every class's evidence lies inside the mask. A sample whose maps carry
no energy at all contributes 0. Masks are resized to the maps (area when shrinking).
Computed in float32 at least: 16-bit sums over classes and positions overflow (float16 tops
out at 65504), and float16 cannot hold the guard on an empty sample's denominator.
Inspired by energy-based pointing (Wang et al., Score-CAM, 2020) and by "right for the
right reasons" (Ross et al., 2017); our formulation.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from egl._check import check_same_batch, check_shape
from egl._masks import as_mask, check_aspect, resize_mask
from egl._transfer import upload
from egl.losses._reduction import reduce
from egl.losses.base import AlignmentLoss

__all__ = ["energy_outside", "EnergyOutsideLoss"]


def energy_outside(maps: Tensor, mask: Tensor, *, reduction: str = "mean") -> Tensor:
    """Fraction of absolute map energy (summed over classes) outside the mask.

    Args:
        maps: signed maps of every class (see :func:`egl.explainers.class_maps.class_maps`).
        mask: ``[B, H, W]`` or ``[B, 1, H, W]`` in [0, 1], any resolution.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        maps: ``B K h w``; mask: ``B 1 H W``.
    """
    fn = "egl.losses.energy_outside"
    maps = check_shape(maps, "B K H W", fn, "maps")
    m = as_mask(mask, fn, "mask")
    check_same_batch(fn, maps=maps, mask=m)
    maps = maps.to(dtype=torch.promote_types(maps.dtype, torch.float32))  # 16-bit: overflow, and 1e-30 is 0
    check_aspect(tuple(m.shape[-2:]), tuple(maps.shape[-2:]), fn, "mask", "the maps")
    m = resize_mask(upload(m, maps.device, maps.dtype), tuple(maps.shape[-2:]))
    energy = maps.abs().sum(dim=1, keepdim=True)  # [B, 1, h, w]
    total = energy.flatten(1).sum(1)
    outside = (energy * (1.0 - m)).flatten(1).sum(1)
    share = outside / total.clamp_min(1e-30)
    share = share.where((total > 0) | total.isnan(), share.new_zeros(()))  # no energy: 0; a NaN stays NaN
    return reduce(share, reduction, fn)


class EnergyOutsideLoss(AlignmentLoss):
    """Module form of :func:`energy_outside`; ``inputs = "class_maps"``: called as ``loss(maps, mask)``
    with the signed maps of every class."""

    name = "energy_outside"
    inputs: ClassVar[str] = "class_maps"

    def forward(self, maps: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return energy_outside(maps, mask, reduction=self.reduction)
