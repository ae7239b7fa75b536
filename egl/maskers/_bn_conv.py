"""BatchNorm (training mode) followed by a convolution, keeping only BatchNorm's *input* for the backward.

Autograd keeps both the input of a BatchNorm (for its own backward) and its output (the next
convolution's input, for the weight gradient): two full-size maps. The output is an affine
function of the input per channel, ``y = x · s + t`` with ``s = γ / σ`` and ``t = β - μ · s``
from the batch's statistics, so the backward recomputes it with one elementwise pass instead
of keeping it; the convolution is not rerun (its backward needs its input, not its output).
This is the idea of in-place activated BatchNorm (Rota Bulò et al., CVPR 2018) for a
``BN → conv`` pair: the learned masker's ``ReLU → BN → conv`` blocks keep one full-resolution map
each instead of two (the ReLU's output *is* the BatchNorm's input, kept once).

Exactness: the forward is PyTorch's own batch norm (``torch.native_batch_norm``: same output,
same running-statistics update, ``num_batches_tracked`` and ``momentum=None`` handled as
``nn.BatchNorm2d`` does) and PyTorch's convolution; the backward is PyTorch's convolution and
batch-norm backward kernels (on CUDA, for channels-last maps, the statistics, the multiply-add
and the batch-norm backward are egl's Triton kernels by default: ``CONFIG``). Differences from
autograd through the modules: the convolution's weight gradient sees ``y`` recomputed as a
multiply-add, which may differ from the forward's ``y`` in the last bit (on the CPU it was
bit-identical in every test; on CUDA ``nn.BatchNorm2d`` runs cuDNN's kernels, this path the
native ones or egl's); and the pair is differentiable once (no ``create_graph`` through it).
Under autocast the convolution runs in the autocast dtype, as it would in the module.
:func:`fusable` says when a pair may take this path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_choice, fail
from egl._module_hooks import has_hooks

__all__ = ["bn_conv", "fusable"]


def _conv_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run a convolution in here (``x``'s dtype without autocast)."""
    dev = x.device.type
    try:  # torch >= 2.4
        enabled, dtype = torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)
    except TypeError:  # older: one function per device kind
        if dev == "cpu":
            enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        elif dev == "cuda":
            enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        else:  # no per-device query before 2.4: assume no autocast there
            enabled, dtype = False, x.dtype
    if not enabled or not x.is_floating_point() or x.dtype == torch.float64:
        return x.dtype  # autocast leaves float64 alone
    return dtype


#: How :func:`bn_conv`'s forward takes the batch statistics: ``"native"``
#: (``torch.native_batch_norm``), ``"kernel"`` (:func:`egl.kernels.bn_stats.bn_stats` for
#: channels-last maps on CUDA or under the Triton interpreter, one read at float32 precision,
#: then one multiply-add; the running statistics updated as BatchNorm updates them) or
#: ``"auto"`` (the default: ``"kernel"`` for CUDA tensors it supports, ``"native"`` elsewhere).
#: On one H200 (bf16 ``[256, 32, 224, 224]`` channels-last): BatchNorm's forward 4.27 ms native,
#: 2.36 ms from ``bn_stats`` (0.43 ms) and the multiply-add; an ALIGN step 168 → 160 ms
#: (``benchmarks/masker_ops.py``, ``benchmarks/train_step.py`` row ``align-bnstats``).
#: ``"affine"``: how that multiply-add (BatchNorm's output from its statistics, in the forward
#: and again in the backward) runs: ``"kernel"`` (:func:`egl.kernels.channel_affine.channel_affine`,
#: channels-last maps on CUDA or under the Triton interpreter), ``"torch"`` (``torch.addcmul``,
#: whose mixed-dtype broadcast took about 1.9 ms of the 2.36 above) or ``"auto"`` (the default:
#: ``"kernel"`` for CUDA tensors it supports, ``"torch"`` elsewhere). The two may differ in the last
#: bit; with ``stats="kernel"`` (the CUDA default) the forward's output and the backward's
#: recomputation both come from the same one (with native statistics the forward's output is
#: ``native_batch_norm``'s, the recomputation this multiply-add: equal up to the last bit). On
#: the H200 above: 0.40 against 1.94 ms, BatchNorm's forward 0.84 ms, an ALIGN step 156 → 146 ms
#: (``align-torchaffine``).
#: ``"backward"``: BatchNorm's backward, ``"kernel"`` (:func:`egl.kernels.bn_backward.bn_backward`:
#: a float32 sum of the two maps' products, then one two-input multiply-add; channels-last maps on
#: CUDA or under the Triton interpreter), ``"native"`` (``native_batch_norm_backward``) or
#: ``"auto"`` (the default: ``"kernel"`` for CUDA tensors it supports, ``"native"`` elsewhere).
#: On the H200 above: 0.99 against 3.04 ms a call, an ALIGN step 145 → 140 ms (``-nativebnbwd``).
CONFIG: dict[str, Any] = {"stats": "auto", "affine": "auto", "backward": "auto"}
STATS = ("auto", "native", "kernel")
AFFINES = ("auto", "torch", "kernel")
BACKWARDS = ("auto", "native", "kernel")


def _kernel_wanted(key: str, choices: tuple[str, ...], x: Tensor) -> bool:
    """``CONFIG[key]`` asks for egl's kernel on ``x``: ``"kernel"``, or ``"auto"`` on CUDA (the
    other choice, ``choices[1]``, is PyTorch's path)."""
    check_choice(CONFIG[key], choices, "egl.maskers._bn_conv", f"CONFIG['{key}']")
    return CONFIG[key] == "kernel" or (CONFIG[key] == "auto" and x.is_cuda)


def _affine(x: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, invstd: Tensor) -> Tensor:
    """BatchNorm's output from its statistics, in float32, rounded once on the write to ``x``'s
    dtype and layout (no float32 copy of the map); ``CONFIG["affine"]`` picks the kernel."""
    from egl.kernels import channel_affine

    scale = gamma.float() * invstd
    shift = beta.float() - mean * scale
    if not _kernel_wanted("affine", AFFINES, x) or not channel_affine.supported(x):
        return channel_affine.channel_affine_reference(x, scale, shift)
    return channel_affine.channel_affine(x, scale, shift)


def _batch_norm(x: Tensor, gamma: Tensor, beta: Tensor, running: tuple[Tensor | None, Tensor | None],
                factor: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.native_batch_norm(x, ..., training=True)``: ``(y, mean, invstd)``, the statistics
    taken as ``CONFIG["stats"]`` says."""
    from egl.kernels import bn_stats

    if not _kernel_wanted("stats", STATS, x) or not bn_stats.supported(x):
        return torch.native_batch_norm(x, gamma, beta, running[0], running[1], True, factor, eps)
    mean, var = bn_stats.bn_stats(x)
    invstd = torch.rsqrt(var + eps)
    if running[0] is not None and running[1] is not None:
        n = x.numel() // x.shape[1]
        unbiased = var * (n / (n - 1)) if n > 1 else torch.full_like(var, float("nan"))  # as native
        with torch.no_grad():
            running[0].mul_(1.0 - factor).add_(mean.to(running[0].dtype), alpha=factor)
            running[1].mul_(1.0 - factor).add_(unbiased.to(running[1].dtype), alpha=factor)
    return _affine(x, gamma, beta, mean, invstd), mean, invstd


def _batch_norm_backward(g: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, invstd: Tensor, eps: float,
                         mask: tuple[bool, bool, bool]) -> tuple:
    """``native_batch_norm_backward`` in training mode, or its kernels (``CONFIG["backward"]``)."""
    from egl.kernels import bn_backward

    if not _kernel_wanted("backward", BACKWARDS, x) or not bn_backward.supported(g, x):
        return torch.ops.aten.native_batch_norm_backward(g, x, gamma, None, None, mean, invstd, True, eps, list(mask))
    return bn_backward.bn_backward(g, x, gamma, mean, invstd, mask)


def fusable(bn: nn.Module, conv: nn.Module) -> bool:
    """``bn_conv`` computes exactly ``conv(bn(x))`` for this pair: a plain, affine BatchNorm2d in
    training mode, a zero-padded Conv2d, and no hooks that the fused call would skip."""
    return (type(bn) is nn.BatchNorm2d and type(conv) is nn.Conv2d and bn.training and bn.affine
            and conv.padding_mode == "zeros" and not has_hooks(bn, conv))


class _BNConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, gamma: Tensor, beta: Tensor, weight: Tensor, bias: Tensor | None,
                running: tuple[Tensor | None, Tensor | None], factor: float, eps: float, conv: nn.Conv2d) -> Tensor:
        y, mean, invstd = _batch_norm(x, gamma, beta, running, factor, eps)
        dtype = _conv_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            out = F.conv2d(y.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                           conv.stride, conv.padding, conv.dilation, conv.groups)
        ctx.save_for_backward(x, gamma, beta, weight, mean, invstd)
        ctx.conv, ctx.eps, ctx.dtype, ctx.has_bias = conv, eps, dtype, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Any:
        x, gamma, beta, weight, mean, invstd = ctx.saved_tensors
        conv, dtype = ctx.conv, ctx.dtype
        y = _affine(x, gamma, beta, mean, invstd)  # the BN output again
        need = ctx.needs_input_grad
        d_y, d_w, d_b = torch.ops.aten.convolution_backward(
            grad.to(dtype), y.to(dtype), weight.to(dtype), [weight.shape[0]] if ctx.has_bias else None,
            list(conv.stride), list(conv.padding), list(conv.dilation), False, [0, 0], conv.groups,
            [need[0] or need[1] or need[2], need[3], ctx.has_bias and need[4]])
        del y
        d_x = d_gamma = d_beta = None
        if need[0] or need[1] or need[2]:
            d_x, d_gamma, d_beta = _batch_norm_backward(d_y.to(x.dtype), x, gamma, mean, invstd, ctx.eps,
                                                        (need[0], need[1], need[2]))
        return (d_x, d_gamma, d_beta, None if d_w is None else d_w.to(weight.dtype),
                None if d_b is None else d_b.to(weight.dtype), None, None, None, None)


def bn_conv(x: Tensor, bn: nn.BatchNorm2d, conv: nn.Conv2d, *, with_bias: bool = True) -> Tensor:
    """``conv(bn(x))`` with ``bn`` in training mode, keeping only ``x`` for the backward.

    ``conv`` must use zero padding (``padding_mode="zeros"``); ``bn`` must be affine. With
    ``with_bias=False`` the convolution's bias is left out (for the caller to add, e.g. with
    :func:`egl.maskers._bias_relu.bias_relu`).
    """
    if conv.padding_mode != "zeros" or not bn.affine:
        raise fail("egl.maskers.bn_conv", "conv" if conv.padding_mode != "zeros" else "bn",
                   "a zero-padded convolution after an affine BatchNorm",
                   f"padding_mode={conv.padding_mode!r}, affine={bn.affine}", "Call conv(bn(x)) instead")
    if x.dim() == 4 and x.numel() // max(x.shape[1], 1) <= 1:  # nn.BatchNorm2d refuses it too (a ValueError)
        raise fail("egl.maskers.bn_conv", "x", "more than one value per channel to take batch statistics from",
                   f"a map of shape {list(x.shape)}", "Pass a batch of more than one image, or larger images "
                   "(in training mode the variance of one value is undefined: NaN running statistics)")
    factor = 0.0 if bn.momentum is None else bn.momentum  # as nn.BatchNorm2d.forward
    if bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            factor = 1.0 / float(bn.num_batches_tracked)
    running = (bn.running_mean, bn.running_var) if bn.track_running_stats else (None, None)
    return _BNConv.apply(x, bn.weight, bn.bias, conv.weight, conv.bias if with_bias else None, running, factor, bn.eps,
                         conv)
