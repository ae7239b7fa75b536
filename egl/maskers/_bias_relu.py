"""A convolution's bias add and the ReLU after it, as one pass over a channels-last map.

PyTorch adds a convolution's bias as its own broadcast kernel: on one H200 a ``[1, C, 1, 1]`` add
to the learned masker's ``[256, 32, 224, 224]`` bf16 channels-last map took 0.97 ms where a copy
of its bytes took 0.39 (``benchmarks/masker_ops.py``), and the in-place ReLU after it reads and
writes the map again. :func:`bias_relu` takes the convolution's output without its bias and
writes ``relu(h + bias)`` into it in one pass (:func:`egl.kernels.channel_affine.channel_affine`
with a unit scale: the sum in float32, rounded once to the map's dtype, where autocast rounds the
bias to bf16 first). The backward is PyTorch's: the ReLU's gradient from the output kept (as
``nn.ReLU(inplace=True)`` keeps it; for the learned masker it is also the next BatchNorm's
input, kept anyway), the bias's gradient its per-channel sum in float32.

``CONFIG["mode"]``: ``"torch"`` (the default until it is timed on a GPU: the bias added by the
convolution and ``nn.ReLU``), ``"kernel"`` (the one pass, for channels-last maps on CUDA or under
the Triton interpreter) or ``"auto"`` (``"kernel"`` on CUDA, ``"torch"`` elsewhere).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from egl._check import check_choice

__all__ = ["bias_relu", "wanted", "CONFIG"]

CONFIG: dict[str, Any] = {"mode": "torch"}
MODES = ("auto", "torch", "kernel")


def wanted(x: Tensor) -> bool:
    """Whether ``CONFIG["mode"]`` asks for the one pass for a network run on ``x`` (its device). The
    pass itself falls back to PyTorch's ops for maps the kernel does not take (another layout or
    dtype: :func:`egl.kernels.channel_affine.supported`), with the same result up to rounding."""
    check_choice(CONFIG["mode"], MODES, "egl.maskers._bias_relu", "CONFIG['mode']")
    mode = CONFIG["mode"]
    return mode == "kernel" or (mode == "auto" and x.is_cuda)


class _BiasReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Tensor, bias: Tensor) -> Tensor:
        from egl.kernels.channel_affine import channel_affine

        ctx.mark_dirty(h)
        ones = torch.ones(h.shape[1], device=h.device, dtype=torch.float32)
        y = channel_affine(h, ones, bias.detach().float(), relu=True, inplace=True)
        ctx.save_for_backward(y)
        ctx.bias_dtype = bias.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Any:
        (y,) = ctx.saved_tensors
        g = torch.ops.aten.threshold_backward(grad, y, 0)
        d_bias = None
        if ctx.needs_input_grad[1]:  # per-channel sum over the [N·H·W, C] rows of the channels-last map
            d_bias = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return g, d_bias


def bias_relu(h: Tensor, bias: Tensor) -> Tensor:
    """``relu(h + bias[c])`` written into ``h`` (a convolution's output without its bias): one pass
    where :func:`egl.kernels.channel_affine.supported`, PyTorch's ops elsewhere; differentiable once
    (the backward is not itself differentiable)."""
    return _BiasReLU.apply(h, bias)
