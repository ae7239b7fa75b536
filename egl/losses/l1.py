"""L1 distance between a saliency map and a mask (a common alternative to BCE in
explanation supervision, e.g. Gao et al., "RES", KDD 2022)."""

from __future__ import annotations

from torch import Tensor

from egl.losses._reduction import reduce
from egl.losses.base import AlignmentLoss, prepare

__all__ = ["l1_alignment", "L1AlignmentLoss"]


def l1_alignment(saliency: Tensor, mask: Tensor, *, reduction: str = "mean") -> Tensor:
    """Mean absolute difference between saliency and mask (resized to the saliency).

    Shape:
        saliency: ``B 1 h w`` in [0, 1]; mask: ``B 1 H W`` or ``B H W`` in [0, 1].
    """
    fn = "egl.losses.l1_alignment"
    s, m = prepare(saliency, mask, fn)
    return reduce((s - m).abs(), reduction, fn)


class L1AlignmentLoss(AlignmentLoss):
    """Module form of :func:`l1_alignment`."""

    name = "l1"

    def forward(self, saliency: Tensor, mask: Tensor) -> Tensor:
        return l1_alignment(saliency, mask, reduction=self.reduction)
