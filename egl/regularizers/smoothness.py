"""Mask smoothness, ALIGN's Eq. 15 (Hong et al., AAAI 2026, the ``λ2 = 1`` term):

``L_smooth = (1/Z) Σ_ij |M[i,j] − M[i+1,j]| + |M[i,j] − M[i,j+1]|``

We take ``Z`` = the number of elements of one sample's mask (``C·H·W``), then reduce over
the batch. Relation to kornia: ``kornia.losses.total_variation(M)`` returns the *sum*
of the same absolute differences per image and channel, so
``smoothness(M, reduction="none") == total_variation(M).sum(-1) / (C·H·W)`` (tested).
Summed in float32 at least: a float16 mask (a masker under autocast) at a few hundred pixels
a side can sum past float16's largest value, 65504.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egl._check import check_shape
from egl.losses._reduction import reduce
from egl.regularizers.base import Regularizer

__all__ = ["smoothness", "Smoothness"]


def smoothness(mask: Tensor, *, reduction: str = "mean") -> Tensor:
    """Anisotropic total variation per mask element.

    Shape:
        mask: ``B C H W`` (or ``B H W``).

    Example:
        >>> import torch
        >>> float(smoothness(torch.ones(1, 1, 5, 5)))
        0.0
    """
    fn = "egl.regularizers.smoothness"
    if isinstance(mask, Tensor) and mask.dim() == 3:  # [B, H, W] masks, as the losses accept
        mask = mask.unsqueeze(1)
    m = check_shape(mask, "B C H W", fn, "mask")
    m = m.to(dtype=torch.promote_types(m.dtype, torch.float32))  # 16-bit sums overflow at high resolution
    dh = (m[..., 1:, :] - m[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (m[..., :, 1:] - m[..., :, :-1]).abs().flatten(1).sum(1)
    per_sample = (dh + dw) / max(1, m.shape[1] * m.shape[2] * m.shape[3])
    return reduce(per_sample, reduction, fn)


class Smoothness(Regularizer):
    """Module form of :func:`smoothness`."""

    name = "smoothness"

    def forward(self, mask: Tensor) -> Tensor:
        return smoothness(mask, reduction=self.reduction)
