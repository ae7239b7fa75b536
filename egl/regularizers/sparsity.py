"""Mask sparsity: ``mean |M|`` (ALIGN, Hong et al., AAAI 2026, Eq. 14, the ``λ1 = 10`` term).

The paper writes ``‖M‖₁``; dividing it by the number of elements of one sample's mask
(``C·H·W``, as smoothness divides by its ``Z``) is ours: with the plain sum, λ1 = 10 would
outweigh the masker's MSE term by about 5·10⁴ at 224 px. ``reduction`` then reduces over the
batch.
"""

from __future__ import annotations

from torch import Tensor

from egl._check import check_tensor, describe, fail
from egl.losses._reduction import reduce
from egl.regularizers.base import Regularizer

__all__ = ["sparsity", "Sparsity"]


def sparsity(mask: Tensor, *, reduction: str = "mean") -> Tensor:
    """Mean absolute value of each sample's mask, reduced over the batch.

    Shape:
        mask: ``B *`` (typically ``B 1 H W``); each sample needs at least one element.

    Example:
        >>> import torch
        >>> float(sparsity(torch.full((2, 1, 4, 4), 0.25)))
        0.25
    """
    fn = "egl.regularizers.sparsity"
    m = check_tensor(mask, fn, "mask", floating=True)
    if m.dim() == 0:  # (no batch dimension to reduce over)
        raise fail(fn, "mask", "a tensor of shape [B, ...] (typically [B, 1, H, W])", describe(m),
                   "Keep the batch dimension, e.g. mask[None] for a single mask")
    return reduce(m.abs(), reduction, fn)


class Sparsity(Regularizer):
    """Module form of :func:`sparsity`."""

    name = "sparsity"

    def forward(self, mask: Tensor) -> Tensor:
        return sparsity(mask, reduction=self.reduction)
