"""The grayscale masker of ALIGN's m-Gray ablation (Hong et al., AAAI 2026, Table 2): the
image's luminance used as the mask, with no learning.

Luminance uses ITU-R BT.601 weights (``kornia.color.rgb_to_grayscale``); single-channel
inputs are used as they are. Inputs are often mean/std normalised, so the default
rescales each image's luminance to [0, 1] by min-max (``rescale="minmax"``);
``rescale="clamp"`` keeps absolute luminance for images already in [0, 1].
"""

from __future__ import annotations

import kornia
from torch import Tensor

from egl._check import check_choice, check_shape, fail
from egl.explainers._postprocess import minmax_normalize
from egl.maskers.base import Masker

__all__ = ["GrayscaleMasker"]


class GrayscaleMasker(Masker):
    """Luminance as a mask.

    Args:
        rescale: ``"minmax"`` (default, per image) or ``"clamp"`` (to [0, 1]).

    Shape:
        x: ``B 3 H W`` or ``B 1 H W``; returns ``B 1 H W`` in [0, 1].
    """

    name = "grayscale"

    def __init__(self, rescale: str = "minmax") -> None:
        super().__init__()
        check_choice(rescale, ("minmax", "clamp"), "egl.maskers.GrayscaleMasker", "rescale")
        self.rescale = rescale

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        fn = "egl.maskers.grayscale"
        x = check_shape(x, "B C H W", fn, "x")
        if x.shape[1] == 3:
            y = kornia.color.rgb_to_grayscale(x)
        elif x.shape[1] == 1:
            y = x
        else:
            raise fail(fn, "x", "an RGB (3-channel) or grayscale (1-channel) image",
                       f"{x.shape[1]} channels", "Pass RGB images")
        return minmax_normalize(y) if self.rescale == "minmax" else y.clamp(0.0, 1.0)
