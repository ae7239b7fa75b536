"""Gradients *inside* a loss (saliency maps, input gradients) under float16 loss scaling.

Under ``fit(precision="fp16")`` the loss is scaled before the backward so that small gradients
do not flush to zero in float16 (:class:`egl.train.LossScaler`). A gradient that a loss itself
contains (Grad-CAM's weights from autograd, an input gradient for RRR or SGT) runs its own
backward through the same float16 layers, before the loss exists, so the loss scale does not
protect it: an input gradient of 1e-9 is 0 in float16. While a phase runs under a scaler,
:meth:`egl.recipes.Recipe.training_step` activates :func:`inner_scale` with the phase's scale
``S``; :func:`inner_grad` then multiplies the differentiated output by an inner scale ``s`` and
divides the gradients by it afterwards, in float32 (powers of two: exact).

The inner scale is ``s = 2**floor(log2(S) / 2)`` (the square root, rounded down to a power of
two; at most ``MAX_INNER_SCALE``), not ``S``: when the loss is differentiated *through* an inner
gradient (RRR's penalty, Grad-CAM's weights with ``create_graph``), the outer backward reaches
the inner graph through the division by ``s``, with ``S / s`` of the loss scale left; ``s = S`` would leave none, and second-order terms would
flush to zero as if unscaled. ``√S`` gives both the inner gradients and the gradients through
them about ``√S`` of headroom (2^8 at the scaler's default 2^16). The cap 2^15 keeps the seed
(``s`` per element of the output) finite in float16 (largest value 65504). A softmax's backward
sums the seed over the classes, so an inner gradient through a log-softmax over ``K`` classes
(RRR) overflows once ``s·K`` passes 65504 (``K`` = 1000: above ``s`` = 2^6): the step is skipped
and the phase's scale backs off until it fits, which costs the parameters' gradients headroom
too (one scaler per phase serves both). Callers sum the differentiated output in float32
(autocast on the CPU would keep a float16 sum, which can overflow by itself).

A gradient that overflowed (not finite although the differentiated output is) marks the step as
overflowed: it is skipped and the scale backs off, as for the parameters' gradients. A
non-finite *output* (NaN inputs, a diverged model) is not an overflow: the loss turns
non-finite and the step raises as it would without scaling. Without an active scale
:func:`inner_grad` is ``torch.autograd.grad``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

__all__ = ["InnerScale", "inner_grad", "inner_scale", "inner_scale_for", "MAX_INNER_SCALE", "no_autocast"]

#: the largest power of two below float16's largest finite value (65504)
MAX_INNER_SCALE = 2.0**15


def inner_scale_for(scale: float) -> float:
    """The inner scale for a loss scale ``S``: ``2**floor(log2(S) / 2)``, between 1 and ``MAX_INNER_SCALE``."""
    return min(max(2.0 ** math.floor(math.log2(scale) / 2), 1.0), MAX_INNER_SCALE) if scale > 0 else 1.0


class InnerScale:
    """The inner scale of the running phase (from its loss scale) and the overflow flags of its inner
    gradients (device tensors)."""

    def __init__(self, loss_scale: float) -> None:
        self.scale = inner_scale_for(float(loss_scale))
        self.flags: list[Tensor] = []

    def overflowed(self, device: torch.device) -> Tensor:
        """``[1]`` float32 on ``device``: 1 if an inner gradient was not finite, else 0 (no read)."""
        if not self.flags:
            return torch.zeros(1, device=device)
        return torch.stack([f.to(device) for f in self.flags]).amax().reshape(1)


_ACTIVE: ContextVar[InnerScale | None] = ContextVar("egl_inner_scale", default=None)


@contextmanager
def inner_scale(scale: float | None) -> Iterator[InnerScale | None]:
    """Loss-scale the inner gradients taken inside this block, for the loss scale ``scale``
    (their own scale is :func:`inner_scale_for` of it; ``None``: do nothing)."""
    if scale is None:
        yield None
        return
    state = InnerScale(scale)
    token = _ACTIVE.set(state)
    try:
        yield state
    finally:
        _ACTIVE.reset(token)


def inner_grad(output: Tensor, inputs: Tensor | Sequence[Tensor], **kwargs: Any) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(output, inputs, **kwargs)``, loss-scaled when a scale is active.

    Scaled, the gradients come back in float32 (a float16 gradient divided by the scale in
    float16 would flush to zero again).
    """
    state = _ACTIVE.get()
    if state is None:
        return torch.autograd.grad(output, inputs, **kwargs)
    grads = torch.autograd.grad(output.float() * state.scale, inputs, **kwargs)  # float32: no overflow here
    finite_output = torch.isfinite(output.detach()).all()
    out: list[Tensor | None] = []
    for g in grads:
        if g is None:
            out.append(None)
            continue
        g = g.float() / state.scale
        state.flags.append((finite_output & torch.logical_not(torch.isfinite(g.detach()).all())).float().reshape(1))
        out.append(g)
    return tuple(out)


def no_autocast(device_type: str) -> Any:
    """Autocast off for ``device_type`` (nothing to switch off where autocast does not exist:
    meta): for sums and products that float16 would overflow or bfloat16 round."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return nullcontext()
