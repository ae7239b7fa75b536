"""ALIGN's learned masker (Hong et al., AAAI 2026, Sec. 3.2): two 3x3 conv blocks with
ReLU and BatchNorm, then a 1x1 conv and a sigmoid, giving a soft mask at the input's
resolution. The paper gives no width; ours defaults to 32 channels (configurable). Nor does it
give the order within a block: ours is conv → ReLU → BatchNorm (fixed; the fused fast path is
written for it).

Its hidden maps have ``width`` channels at full resolution, so on a 224 px input the masker
costs about as much as a ResNet-18 forward on the CPU (memory traffic of BatchNorm and ReLU
on ``B x 32 x 224 x 224`` maps, and oneDNN's reorders of NCHW tensors).
``memory_format="auto"`` (default) runs it channels-last on the CPU: forward + backward
1.4x faster there (486 -> 342 ms, batch 8 x 224 px, 2 cores), same values up to rounding.
On other devices "auto" keeps the input's layout (pass channels-last inputs, as recommended
for bf16 training on GPUs, and the masker follows).

``recompute_bn=True`` (default) keeps one full-resolution map per block for the backward
instead of two: in training mode each ``BN → conv`` pair runs as :func:`egl.maskers._bn_conv.bn_conv`,
which recomputes the BatchNorm's output from its input (one multiply-add per element) instead
of keeping it. Same outputs and running statistics; gradients equal to rounding (the
recomputed map may differ from the stored one in its last bit), so long runs drift apart from
``recompute_bn=False`` as after any rounding change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_choice, check_flag, check_int, check_model_dtype, check_shape, fail
from egl._module_hooks import has_hooks
from egl.maskers import _bias_relu
from egl.maskers._bias_relu import bias_relu
from egl.maskers._bn_conv import bn_conv, fusable
from egl.maskers.base import Masker

__all__ = ["LearnedMasker"]


class LearnedMasker(Masker):
    """``conv3x3 → ReLU → BN → conv3x3 → ReLU → BN → conv1x1 → sigmoid``.

    Args:
        in_channels: image channels (default 3).
        width: channels of the hidden blocks (default 32; the paper does not say).
        memory_format: layout of the hidden maps: ``"auto"`` (default: channels-last on the
            CPU, the input's layout elsewhere), ``"channels_last"`` or ``"input"`` (the
            input's layout). The output's values do not depend on it (up to rounding).
        recompute_bn: with gradients, recompute the output of each BatchNorm in training mode
            in the backward instead of keeping it (default True: half the masker's activation
            memory, one elementwise pass per block more). A BatchNorm in eval mode (frozen),
            replaced (``SyncBatchNorm``) or hooked runs as a plain module.

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

    MEMORY_FORMATS = ("auto", "channels_last", "input")

    def __init__(self, in_channels: int = 3, width: int = 32, memory_format: str = "auto",
                 recompute_bn: bool = True) -> None:
        super().__init__()
        check_choice(memory_format, self.MEMORY_FORMATS, "egl.maskers.LearnedMasker", "memory_format")
        self.memory_format = memory_format
        self.recompute_bn = check_flag(recompute_bn, "egl.maskers.LearnedMasker", "recompute_bn")
        check_int(in_channels, "egl.maskers.LearnedMasker", "in_channels", low=1, fix="Pass e.g. in_channels=3 (RGB)")
        check_int(width, "egl.maskers.LearnedMasker", "width", low=1, fix="Pass e.g. width=32")
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
        check_model_dtype(self, x, fn, "x")
        if self.memory_format == "channels_last" or (self.memory_format == "auto" and x.device.type == "cpu"):
            x = x.contiguous(memory_format=torch.channels_last)
        if not (self.recompute_bn and torch.is_grad_enabled()) or len(self.net) != 7 or has_hooks(self.net):
            return self.net(x).sigmoid()  # (a net edited by the user runs as it is)
        conv1, relu1, bn1, conv2, relu2, bn2, conv3 = self.net
        if self._bias_relu_applies(x):  # each block's bias add and ReLU in one pass (egl.maskers._bias_relu)
            h = bias_relu(F.conv2d(x, conv1.weight, None, conv1.stride, conv1.padding, conv1.dilation, conv1.groups),
                          conv1.bias)
            h = bias_relu(bn_conv(h, bn1, conv2, with_bias=False), conv2.bias)
            return bn_conv(h, bn2, conv3).sigmoid()
        h = relu1(conv1(x))
        h = relu2(bn_conv(h, bn1, conv2) if fusable(bn1, conv2) else conv2(bn1(h)))
        return (bn_conv(h, bn2, conv3) if fusable(bn2, conv3) else conv3(bn2(h))).sigmoid()

    def _bias_relu_applies(self, x: Tensor) -> bool:
        """The blocks are plain modules (the fused form computes exactly them) and
        ``_bias_relu.CONFIG`` asks for the one pass on ``x``'s device."""
        conv1, relu1, bn1, conv2, relu2, bn2, conv3 = self.net
        plain = (all(type(c) is nn.Conv2d and c.bias is not None and c.padding_mode == "zeros" for c in (conv1, conv2))
                 and type(relu1) is nn.ReLU and type(relu2) is nn.ReLU and fusable(bn1, conv2) and fusable(bn2, conv3))
        return plain and _bias_relu.wanted(x)

    def extra_repr(self) -> str:
        return f"memory_format={self.memory_format!r}, recompute_bn={self.recompute_bn}"
