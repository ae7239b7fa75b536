"""Ground-truth masker: human annotations that come with the data, as in explanation
supervision with masks (Ross et al. 2017; the upper bound of ALIGN's masker ablations).

Accepts ``[B, H, W]`` or ``[B, 1, H, W]`` bool or float masks in [0, 1] and resizes them
to the input's resolution (area averaging when shrinking, bilinear when enlarging).
"""

from __future__ import annotations

from torch import Tensor

from egl._check import check_same_batch, check_shape, fail
from egl._masks import as_mask, check_aspect, resize_mask
from egl._transfer import upload
from egl.maskers.base import Masker

__all__ = ["GroundTruthMasker"]


class GroundTruthMasker(Masker):
    """Returns the data's own masks, validated and at the input's resolution.

    Shape:
        x: ``B C H W``; mask: ``B H W`` or ``B 1 H' W'``; returns ``B 1 H W`` in [0, 1].
    """

    name = "ground_truth"
    needs_mask = True

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        fn = "egl.maskers.ground_truth"
        x = check_shape(x, "B C H W", fn, "x")
        if mask is None:
            raise fail(fn, "mask", "the batch's ground-truth masks", "None",
                       "Give batches a 'mask' (dict key 'mask'), or choose a masker that needs none "
                       "('learned', 'grayscale')")
        m = as_mask(mask, fn, "mask")
        check_same_batch(fn, x=x, mask=m)
        check_aspect(tuple(m.shape[-2:]), tuple(x.shape[-2:]), fn, "mask", "the images")
        return resize_mask(upload(m, x.device, x.dtype), (int(x.shape[-2]), int(x.shape[-1])))
