"""The input gradient of a strided stem convolution as one stride-1 convolution and a pixel shuffle.

Methods that differentiate with respect to the image (ALIGN's masker phase, input gradients,
RRR, SGT) run the backward of the network's first convolution to its 3-channel input. For
a strided convolution that is a transposed convolution with 3 output channels, a degenerate
shape for oneDNN and cuDNN: on a 2-core CPU, the input gradient of a ResNet stem (7x7,
stride 2, 64 → 3 channels) for 16 images at 224 px takes 96-105 ms, 2.5x the convolution's own
forward (``benchmarks/masker_ops.py``).

Split by output phase, it is a small stride-1 convolution: with stride ``s``, output pixel
``(s·u + a, s·v + b)`` receives ``Σ_o Σ_{t,r} W[o, c, a + p − s·t, b + p − s·r] · g[o, u + t, v + r]``
over the taps that fall inside the kernel. Stacking the ``s²`` phases of every input channel
as output channels gives one convolution of ``g`` with ``C_in·s²`` output channels (12 for a
ResNet stem, 768 for a ViT's 16x16 patch embedding) and a kernel of about ``k/s`` taps, then
``pixel_shuffle(s)`` (the sub-pixel convolution of Shi et al., 2016, run backwards). The same
product count, in a shape the libraries handle well: 46-48 ms on that CPU (see :func:`worth`).

:func:`conv2d_input_grad` computes it; :func:`subpixel_input_grads` is a context in which the
eligible convolutions of a model (2-D, stride > 1, no dilation or groups, zero padding, at
most ``CONFIG["max_in_channels"]`` input channels: the stems) compute their input gradient
so. Their forward is unchanged; the weight and bias gradients come from the library's
convolution backward.
Gradients of every order are exact (RRR's double backpropagation included; see
:class:`_InputGrad`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_choice, check_int
from egl._transfer import upload

__all__ = ["CONFIG", "conv2d_input_grad", "subpixel_weight", "eligible", "worth", "subpixel_input_grads"]

#: ``use``: where the context swaps the backward in: ``"auto"`` (CPU tensors, and 16-bit
#: computations on CUDA, for the kernel shapes where it measured faster: see :func:`worth` and
#: :func:`_auto_applies`; other devices keep their library's),
#: ``"always"`` (every eligible convolution, any device) or ``"never"``. ``max_in_channels``:
#: convolutions with more input channels keep theirs.
CONFIG: dict[str, Any] = {"use": "auto", "max_in_channels": 4}
#: The device types where ``use="auto"`` swaps the backward in (timed on both).
AUTO_DEVICES = ("cpu", "cuda")


def _taps(k: int, s: int, p: int) -> tuple[int, int]:
    """The range ``[t_min, t_max]`` of offsets ``t`` with ``0 <= a + p - s·t < k`` for some phase ``a < s``."""
    return math.ceil((p - k + 1) / s), (s - 1 + p) // s


_TABLES: dict[tuple[Any, ...], tuple[Tensor, Tensor, Tensor]] = {}


def _tables(kh: int, kw: int, stride: tuple[int, int], padding: tuple[int, int],
            device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Kernel rows and columns of each phase and tap (clamped), and which taps exist: built once
    per shape and device (no host-to-device copy per backward)."""
    key = (kh, kw, stride, padding, str(device))
    if key not in _TABLES:
        (sh, sw), (ph, pw) = stride, padding
        (th0, th1), (tw0, tw1) = _taps(kh, sh, ph), _taps(kw, sw, pw)
        rows = torch.tensor([[a + ph - sh * t for t in range(th0, th1 + 1)] for a in range(sh)])  # [sh, kh']
        cols = torch.tensor([[b + pw - sw * t for t in range(tw0, tw1 + 1)] for b in range(sw)])  # [sw, kw']
        ok = ((rows >= 0) & (rows < kh))[:, None, :, None] & ((cols >= 0) & (cols < kw))[None, :, None, :]
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = (upload(rows.clamp(0, kh - 1), device), upload(cols.clamp(0, kw - 1), device),
                        upload(ok, device))
    return _TABLES[key]


def subpixel_weight(weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """The ``[C_in·sh·sw, C_out, kh', kw']`` kernel of :func:`conv2d_input_grad` (differentiable in ``weight``)."""
    c_out, c_in, kh, kw = weight.shape
    (sh, sw) = stride
    # for each output phase a and offset t, the kernel row a + p − s·t (or none): one gather
    rows, cols, ok = _tables(kh, kw, stride, padding, weight.device)
    w = weight.permute(1, 0, 2, 3)  # [C_in, C_out, kh, kw]
    w = w[:, :, rows]  # [C_in, C_out, sh, kh', kw]
    w = w[..., cols]  # [C_in, C_out, sh, kh', sw, kw']
    w = w.permute(0, 2, 4, 1, 3, 5)  # [C_in, sh, sw, C_out, kh', kw']
    w = w * ok.to(w.dtype)[None, :, :, None]  # taps outside the kernel are zero
    return w.reshape(c_in * sh * sw, c_out, rows.shape[1], cols.shape[1])


def conv2d_input_grad(grad: Tensor, weight: Tensor, input_hw: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int]) -> Tensor:
    """``∂L/∂x`` of ``y = conv2d(x, weight, stride=stride, padding=padding)`` given ``grad = ∂L/∂y``.

    Equal to ``torch.nn.grad.conv2d_input`` (to rounding), as one stride-1 convolution with
    ``C_in·sh·sw`` output channels and a pixel shuffle.

    Shape:
        grad: ``B C_out Ho Wo``; weight: ``C_out C_in kh kw``; returns ``B C_in H W``.
    """
    (sh, sw), (ph, pw) = stride, padding
    _, c_in, kh, kw = weight.shape
    h, w = input_hw
    (th0, th1), (tw0, tw1) = _taps(kh, sh, ph), _taps(kw, sw, pw)
    uh, uw = -(-h // sh), -(-w // sw)  # phase rows and columns that cover the input
    ho, wo = grad.shape[-2:]
    # output row u reads grad rows u + t, t in [t0, t1]: the convolution's own (symmetric) zero
    # padding P puts u at output row u + P + t0; P covers both ends (no padded copy of grad)
    pad_h, pad_w = max(-th0, uh + th1 - ho, 0), max(-tw0, uw + tw1 - wo, 0)
    out = F.conv2d(grad, subpixel_weight(weight, stride, padding), padding=(pad_h, pad_w))
    out = out[..., pad_h + th0: pad_h + th0 + uh, pad_w + tw0: pad_w + tw0 + uw]  # [B, C_in·sh·sw, uh, uw]
    if sh == sw:
        out = F.pixel_shuffle(out, sh)
    else:
        b = out.shape[0]
        out = out.view(b, c_in, sh, sw, uh, uw).permute(0, 1, 4, 2, 5, 3).reshape(b, c_in, uh * sh, uw * sw)
    return out[..., :h, :w]


class _InputGrad(torch.autograd.Function):
    """Passes ``y = conv2d(x.detach(), weight, bias)`` through and gives ``x`` its gradient with
    :func:`conv2d_input_grad`.

    A first-order backward leaves the weight's and bias's gradients to ``y``'s own node, which
    forms them only when the backward needs them (a gradient with respect to the input alone,
    the common case here, needs neither). Under ``create_graph`` (the backward will itself be
    differentiated) every gradient is formed here from ``x`` and ``weight`` with their history,
    so all second-order terms are exact, the weight gradient's dependence on ``x`` included; the
    weight's gradient is then formed whenever it requires grad (RRR's input gradient pays for it).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, bias is not None)
        # a new tensor, not a view of ``y``: an in-place op on the output (ReLU(inplace=True)) is allowed
        return y.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx = gw = gb = None
        if need_x:
            gx = conv2d_input_grad(grad, weight, tuple(x.shape[-2:]), stride, padding)
            if any(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in (x, weight)):
                gx = gx.contiguous(memory_format=torch.channels_last)  # the layout the library's backward gives
        if not torch.is_grad_enabled():  # first order: the weight and bias from y's node, when needed
            return gx, None, None, grad, None, None
        if need_w:
            gw = torch.nn.grad.conv2d_weight(x, weight.shape, grad, stride, padding)
        if need_b and has_bias:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int],
          padding: tuple[int, int]) -> Tensor:
    """``conv2d(x, weight, bias, stride, padding)`` whose input gradient is :func:`conv2d_input_grad`."""
    y = F.conv2d(x.detach(), weight, bias, stride, padding)
    return _InputGrad.apply(x, weight, bias, y, stride, padding)


def eligible(conv: nn.Module) -> bool:
    """Whether :func:`subpixel_input_grads` takes over this module's input gradient."""
    return (type(conv) is nn.Conv2d and conv.groups == 1 and conv.dilation == (1, 1)
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and max(conv.stride) > 1 and conv.in_channels <= CONFIG["max_in_channels"])


def worth(kernel: tuple[int, int], stride: tuple[int, int]) -> bool:
    """``use="auto"``: the kernel shapes where the sub-pixel form is clearly faster (CPU and CUDA).

    2-core CPU, 16 images at 224 px, 3 input channels (``benchmarks/masker_ops.py`` and a sweep;
    ms, the library's backward → sub-pixel, NCHW): 7x7/2 with 64 outputs (ResNet) 96-105 → 46-48
    (channels-last 73 → 34), 16 outputs 23-25 → 12-13; 5x5/2 60 → 34; 6x6/2 79 → 37; patch
    embeddings 4x4/4 (ConvNeXt) 14-17 → 6-6.4, 8x8/8 16 → 5.7, 16x16/16 (ViT) 50-55 → 10-12.
    Kernels up to twice the stride are close and noisy (3x3/2 with 16-48 outputs 7-30 against
    9-23, either way between runs; 64 outputs 36-43 → 26-35; 2x2/2 even): left to the library.
    One H200, 512 images at 224 px, bf16, channels-last (NCHW): ResNet 7x7/2 6.87 → 2.10 ms
    (8.21 → 2.83; cuDNN's slowest kernel there), ConvNeXt 4x4/4 0.69 → 0.39 (2.89 → 0.37), ViT
    16x16/16 3.52 → 0.38 (2.43 → 0.63); an ALIGN step 168 → 161 ms, SGT 69.2 → 65.0 ms
    (``benchmarks/measured/h200-2026-11-27``). The same rule serves both.
    """
    return all(k > 2 * s or k == s >= 4 for k, s in zip(kernel, stride))


def _autocast(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t


def _saved_tensor_hooks_active() -> bool:
    """Whether saved-tensor hooks are active (non-reentrant activation checkpointing, offloading to
    the CPU): a checkpoint recomputes the forward during the backward, after the block has ended,
    and must save the same tensors as the first time. Unknown (a torch without the query): yes."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)  # torch.utils.checkpoint's own test
    return top is None or top(False) is not None


def _auto_applies(conv: nn.Conv2d, x: Tensor) -> bool:
    """``use="auto"``: a device of ``AUTO_DEVICES``, a kernel shape :func:`worth` it, and on CUDA a
    16-bit computation (the input's dtype, or autocast's). In float32 on CUDA the sub-pixel form
    is no faster (``benchmarks/input_grads.py``: 15.3 against 15.7 ms, ResNet-18 at batch 128)
    and its stride-1 convolution takes cuDNN's TF32 kernels where they are allowed (the PyTorch
    default for convolutions): a relative error of 3e-4 where the library's backward keeps 2e-7
    (``benchmarks/gpu_checks.py`` on an H200)."""
    dev = x.device.type
    if dev not in AUTO_DEVICES or not worth(conv.kernel_size, conv.stride):
        return False
    if dev != "cuda":
        return True
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) and x.dtype != torch.float64 else x.dtype
    return dtype in (torch.float16, torch.bfloat16)


class _SubpixelConv2d(nn.Conv2d):
    """What an eligible ``nn.Conv2d`` becomes inside :func:`subpixel_input_grads` (its class is
    swapped, so that copies made meanwhile, e.g. ``nn.DataParallel``'s replicas, run their own
    weights): the same forward, and the sub-pixel input gradient."""

    def forward(self, x: Tensor) -> Tensor:
        use = CONFIG["use"]
        if not (x.requires_grad and torch.is_grad_enabled()) or use == "never" or x.dim() != 4 \
                or (use == "auto" and not _auto_applies(self, x)) or _saved_tensor_hooks_active():
            return super().forward(x)
        w, b = self.weight, self.bias
        dev = x.device.type
        if torch.is_autocast_enabled(dev):  # the casts autocast would make (float64 stays), as tracked ops
            dt = torch.get_autocast_dtype(dev)
            x, w = _autocast(x, dt), _autocast(w, dt)
            b = None if b is None else _autocast(b, dt)
        with torch.autocast(dev, enabled=False):
            return _conv(x, w, b, tuple(self.stride), tuple(self.padding))


@contextlib.contextmanager
def subpixel_input_grads(model: nn.Module) -> Iterator[list[str]]:
    """Inside the block, ``model``'s eligible convolutions (see :func:`eligible`) form their input
    gradient with :func:`conv2d_input_grad`. Yields their names; restores them on exit.

    Only forwards run inside the block are affected (the graph they record keeps the choice,
    whenever its backward runs), except under saved-tensor hooks (activation checkpointing,
    ``save_on_cpu``), where the library's convolution runs: a checkpoint reruns the forward
    during the backward, outside the block. The swap is per module instance, not per thread:
    another thread running the same model meanwhile may take either path (both exact).
    """
    use = CONFIG["use"]
    check_choice(use, ("auto", "always", "never"), "egl.kernels.subpixel_dgrad", "CONFIG['use']")
    limit = CONFIG["max_in_channels"]
    check_int(limit, "egl.kernels.subpixel_dgrad", "CONFIG['max_in_channels']", low=1,
              fix="Set it to the largest input-channel count to take over (4 covers RGB(A) stems)")
    first = next(model.parameters(), None)
    if use == "never" or (use == "auto" and first is not None and first.device.type not in AUTO_DEVICES):
        yield []  # nothing would be swapped in: skip the walk over the modules
        return
    swapped = [(name, m) for name, m in model.named_modules() if eligible(m)]  # exactly nn.Conv2d: not twice
    for _, m in swapped:
        m.__class__ = _SubpixelConv2d
    try:
        yield [name for name, _ in swapped]
    finally:
        for _, m in swapped:
            m.__class__ = nn.Conv2d
