"""``x · scale[c] + shift[c]`` over a channels-last map: BatchNorm's output from its statistics
(and, with ``relu=True``, a convolution's bias add and the ReLU after it, in one pass).

PyTorch's ``torch.addcmul(shift, x, scale, out=...)`` with float32 ``[1, C, 1, 1]`` factors and a
bf16 channels-last map takes its mixed-dtype broadcast path: on one H200 it wrote the learned
masker's ``[256, 32, 224, 224]`` bf16 map in about 1.9 ms, where a copy of the same bytes took
0.39 ms (``benchmarks/masker_ops.py``). :func:`channel_affine` views the map as ``[N·H·W, C]``
rows and runs one Triton kernel: each program loads a band of rows, multiplies and adds in
float32 with the ``C`` factors held in registers, and rounds once on the store to ``x``'s dtype
(as ``out=`` does): 0.40 ms there, 97% of the copy bandwidth, with a largest error of
0.5 ε (|x·s| + |t|) against the float64 result, bf16 and float32 (``benchmarks/gpu_checks.py``).
With ``TRITON_INTERPRET=1`` the kernel also runs on CPU tensors (how CI tests it);
:func:`channel_affine_reference` is the PyTorch form, taken for any other layout or dtype.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from egl._check import check_per_channel, check_shape

__all__ = ["channel_affine", "channel_affine_reference", "supported"]

_TILE = 4096  # elements per program: rows = this // the padded channel count
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # (float64 keeps PyTorch's float64 arithmetic)


def supported(x: Tensor) -> bool:
    """:func:`channel_affine` runs its kernel for ``x`` (else it takes the reference)."""
    from egl.kernels.cam_epilogue import triton_available

    on_device = x.is_cuda or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return (on_device and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and x.dtype in _DTYPES and 0 < x.shape[1] <= 1024 and x.numel() > 0 and triton_available())


def channel_affine_reference(x: Tensor, scale: Tensor, shift: Tensor, *, relu: bool = False,
                             inplace: bool = False) -> Tensor:
    """``shift[c] + x · scale[c]`` in float32 (float64 for a float64 ``x``), rounded once to ``x``'s
    dtype and layout (then ReLU'd, and written into ``x`` with ``inplace``)."""
    out = torch.addcmul(shift.float().view(1, -1, 1, 1), x, scale.float().view(1, -1, 1, 1),
                        out=x if inplace else torch.empty_like(x))
    return out.relu_() if relu else out


def channel_affine(x: Tensor, scale: Tensor, shift: Tensor, *, relu: bool = False, inplace: bool = False) -> Tensor:
    """``x [N, C, H, W] · scale[c] + shift[c]``, computed in float32, returned in ``x``'s dtype and layout.

    ``relu=True`` applies a ReLU before the store (NaN kept, as ``torch.relu``); ``inplace=True``
    writes the result into ``x``. Channels-last ``x`` on CUDA (or the Triton interpreter) takes
    the kernel; anything else :func:`channel_affine_reference`. The two may differ in the last bit
    of the rounded result (a fused multiply-add against PyTorch's): pick one per use and keep it.
    """
    fn = "egl.kernels.channel_affine"
    check_shape(x, "N C H W", fn, "x")
    for name, t in (("scale", scale), ("shift", shift)):
        check_per_channel(t, x, fn, name, f"Pass {name} with x.shape[1] values, on x's device")
    if not supported(x):
        return channel_affine_reference(x, scale, shift, relu=relu, inplace=inplace)
    from egl.kernels import _channel_affine_triton

    return _channel_affine_triton.affine(x, scale.float().contiguous(), shift.float().contiguous(), _TILE, relu,
                                         inplace)
