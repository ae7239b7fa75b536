"""Gradients *inside* a loss (saliency maps, input gradients) under float16 loss scaling.

Under ``fit(precision="fp16")`` the loss is scaled before the backward so that small gradients
do not flush to zero in float16 (:class:`egl.train.LossScaler`). A gradient that a loss itself
contains (Grad-CAM's weights from autograd, an input gradient for RRR or SGT) runs its own
backward through the same float16 layers, before the loss exists, so the loss scale does not
protect it: an input gradient of 1e-9 is 0 in float16. While a phase runs under a scaler,
:meth:`egl.recipes.Recipe.training_step` activates :func:`inner_scale` with the phase's scale;
:func:`inner_grad` then multiplies the differentiated output by it and divides the gradients
by it afterwards, in float32 (powers of two: exact). The inner scale is the phase's scale capped
at ``MAX_INNER_SCALE`` = 2**15: the output's own gradient (the scale itself) enters the float16
graph, whose largest finite value is 65504, so 2**16 (the loss scaler's default start) would be
inf there; an outer loss is a mean over the batch and does not seed its float16 graph with the
whole scale. A gradient that overflowed (inf or NaN
after scaling) marks the step as overflowed: it is skipped and the scale backs off, as for the
parameters' gradients. Without an active scale :func:`inner_grad` is ``torch.autograd.grad``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

__all__ = ["InnerScale", "inner_grad", "inner_scale", "MAX_INNER_SCALE"]

#: the largest power of two below float16's largest finite value (65504)
MAX_INNER_SCALE = 2.0**15


class InnerScale:
    """The scale of the running phase and the overflow flags of its inner gradients (device tensors)."""

    def __init__(self, scale: float) -> None:
        self.scale = min(float(scale), MAX_INNER_SCALE)
        self.flags: list[Tensor] = []

    def overflowed(self, device: torch.device) -> Tensor:
        """``[1]`` float32 on ``device``: 1 if an inner gradient was not finite, else 0 (no read)."""
        if not self.flags:
            return torch.zeros(1, device=device)
        return torch.stack([f.to(device) for f in self.flags]).amax().reshape(1)


_ACTIVE: ContextVar[InnerScale | None] = ContextVar("egl_inner_scale", default=None)


@contextmanager
def inner_scale(scale: float | None) -> Iterator[InnerScale | None]:
    """Scale the inner gradients taken inside this block by ``scale`` (at most
    ``MAX_INNER_SCALE``; ``None``: do nothing)."""
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
    out: list[Tensor | None] = []
    for g in grads:
        if g is None:
            out.append(None)
            continue
        g = g.float() / state.scale
        state.flags.append(torch.logical_not(torch.isfinite(g.detach()).all()).float().reshape(1))
        out.append(g)
    return tuple(out)
