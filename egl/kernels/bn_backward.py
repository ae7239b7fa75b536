"""BatchNorm's backward in training mode for channels-last maps: two passes over the two maps.

``torch.ops.aten.native_batch_norm_backward`` took 3.0 ms a call on the learned masker's
``[256, 32, 224, 224]`` bf16 channels-last maps on an H200 (``benchmarks/profile_step.py
--phase masker``), where reading the two maps twice and writing one costs about 1 ms at the
copy bandwidth. With ``x̂ = (x - μ)·σ⁻¹`` and the incoming gradient ``g``:
``dβ = Σ g``, ``dγ = Σ g·x̂`` and ``dx = γσ⁻¹ (g - dβ/N - x̂·dγ/N)`` (sums over the ``N = B·H·W``
positions of a channel). :func:`bn_backward` views both maps as ``[N·H·W, C]`` rows: one Triton
kernel sums ``g`` and ``g·(x - μ)`` per channel in float32 over bands of rows (the bands
combined in float64), a second writes ``dx = a·g + b·(x - μ) + c`` with per-channel factors,
computed in float32 and rounded once to ``x``'s dtype. ``x - μ`` is formed in the kernels, so
a large mean does not cancel the gradient's small part. On the H200: 0.99 ms a call (its four
map reads and one write at 4.2 TB/s, the copy bandwidth),
``dx`` within 1.7e-3 (bf16) / 4.4e-8 (float32) of PyTorch's kernel run in float64
(``benchmarks/gpu_checks.py``, also at a mean of 1000).

With ``TRITON_INTERPRET=1`` the kernels also run on CPU tensors (how CI tests them); for any
other layout, or without Triton, :func:`bn_backward_reference` (PyTorch's kernel) runs.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from egl._check import check_per_channel, fail

__all__ = ["bn_backward", "bn_backward_reference", "supported"]

_TILE = 4096  # elements per loaded tile: rows = this // the padded channel count
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # (float64 keeps PyTorch's float64 arithmetic)


def supported(g: Tensor, x: Tensor) -> bool:
    """:func:`bn_backward` runs its kernels for ``g`` and ``x`` (else it takes the reference)."""
    from egl.kernels.cam_epilogue import triton_available

    on_device = x.is_cuda or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    cl = torch.channels_last
    return (on_device and x.dim() == 4 and g.shape == x.shape and g.device == x.device and x.dtype in _DTYPES
            and g.dtype == x.dtype and x.is_contiguous(memory_format=cl) and g.is_contiguous(memory_format=cl)
            and 0 < x.shape[1] <= 1024 and x.numel() > 0 and triton_available())


def bn_backward_reference(g: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, invstd: Tensor,
                          mask: tuple[bool, bool, bool] = (True, True, True)) -> tuple:
    """``torch.ops.aten.native_batch_norm_backward`` in training mode: ``(dx, dγ, dβ)``."""
    return torch.ops.aten.native_batch_norm_backward(g, x, gamma, None, None, mean, invstd, True, 0.0, list(mask))


def bn_backward(g: Tensor, x: Tensor, gamma: Tensor | None, mean: Tensor, invstd: Tensor,
                mask: tuple[bool, bool, bool] = (True, True, True)) -> tuple:
    """Gradients ``(dx, dγ, dβ)`` of training-mode BatchNorm ``y = γ·(x - μ)·σ⁻¹ + β`` (batch
    statistics ``mean`` and ``invstd``: ``[C]``, float32 as BatchNorm saves them), given
    ``g = dL/dy``; ``None`` where ``mask`` says so. ``dx`` in ``x``'s dtype and layout, ``dγ`` and
    ``dβ`` in ``gamma``'s dtype (float32 without ``gamma``: ``γ = 1``, as PyTorch's kernel takes it).

    Channels-last maps on CUDA (or the Triton interpreter) take the kernels, anything else
    :func:`bn_backward_reference`. Equal to it up to rounding (sums in float32 bands).
    """
    fn = "egl.kernels.bn_backward"
    if x.dim() != 4 or x.numel() == 0:
        raise fail(fn, "x", "a non-empty [N, C, H, W] map", f"shape {list(x.shape)}", "Pass the BatchNorm's input")
    c = x.shape[1]
    for name, t in (("gamma", gamma), ("mean", mean), ("invstd", invstd)):
        if t is not None or name != "gamma":
            check_per_channel(t, x, fn, name, f"Pass the BatchNorm's {name} for x's {c} channels, on x's device")
    if not any(mask):
        return None, None, None
    if not supported(g, x):
        return bn_backward_reference(g, x, gamma, mean, invstd, mask)
    from egl.kernels import _bn_backward_triton

    n = x.numel() // c
    mu = mean.float().contiguous()
    total = _bn_backward_triton.partial_sums(g, x, mu, _TILE).double().sum(0)  # [2, C]
    inv = invstd.double()
    gam = gamma.double() if gamma is not None else torch.ones_like(inv)
    d_beta, d_gamma = total[0], total[1] * inv
    dx = None
    if mask[0]:
        a = gam * inv
        b = -a * inv * d_gamma / n
        c0 = -a * d_beta / n
        dx = _bn_backward_triton.input_grad(g, x, a.float(), b.float(), mu, c0.float(), _TILE)
    out_dtype = gamma.dtype if gamma is not None else torch.float32
    return (dx, d_gamma.to(out_dtype) if mask[1] else None, d_beta.to(out_dtype) if mask[2] else None)
