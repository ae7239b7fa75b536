"""ALIGN's learned masker (Hong et al., AAAI 2026, Sec. 3.2): two 3x3 conv blocks with
ReLU and BatchNorm, then a 1x1 conv and a sigmoid, giving a soft mask at the input's
resolution. The paper gives no width; ours defaults to 32 channels (configurable).
"""

from __future__ import annotations

from torch import Tensor, nn

from egl._check import check_shape, fail
from egl.maskers.base import Masker

__all__ = ["LearnedMasker"]


class LearnedMasker(Masker):
    """``conv3x3 → ReLU → BN → conv3x3 → ReLU → BN → conv1x1 → sigmoid``.

    Args:
        in_channels: image channels (default 3).
        width: channels of the hidden blocks (default 32; the paper does not say).

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` in (0, 1).

    Example:
        >>> import torch
        >>> LearnedMasker()(torch.randn(2, 3, 16, 16)).shape
        torch.Size([2, 1, 16, 16])
    """

    name = "learned"
    trainable = True
    recomputable = True  # convolutions and BatchNorm only

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        for arg, v in (("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise fail("egl.maskers.LearnedMasker", arg, "a positive int", repr(v), f"Pass e.g. {arg}=3")
        self.in_channels = in_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(width),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.BatchNorm2d(width),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        fn = "egl.maskers.learned"
        x = check_shape(x, "B C H W", fn, "x")
        if x.shape[1] != self.in_channels:
            raise fail(fn, "x", f"{self.in_channels} channels", f"{x.shape[1]} (shape {list(x.shape)})",
                       f"Build the masker with in_channels={x.shape[1]}")
        return self.net(x).sigmoid()
