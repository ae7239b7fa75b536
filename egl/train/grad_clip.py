"""Gradient-norm clipping for :func:`egl.train.fit` (``grad_clip=``).

Each phase's gradients are scaled down so that their total L2 norm is at most ``max_norm``
(``torch.nn.utils.clip_grad_norm_``'s rule, with the norm taken in float32), right before its
optimiser steps: after a float16 run's
unscaling, and under ``torchrun`` after the gradients are averaged over the ranks (the clip is
an optimiser step pre-hook registered after the averaging one), so every rank clips the same
averaged gradient, as DDP users clip after ``backward``. The norm before clipping is logged as
``"<phase>/grad_norm"``: one more device-to-host read per step, after the step is queued.
DomainBed and ALIGN do not clip (the default, None).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any

import torch

from egl._check import fail

__all__ = ["check_grad_clip", "clip_gradients", "clip_grad_norm", "read_norms"]


def check_grad_clip(grad_clip: object, phases: list[str], fn: str) -> dict[str, float]:
    """``grad_clip`` as ``{phase: max_norm}``: one number for every phase, or a dict naming some."""
    if grad_clip is None:
        return {}
    fix = "Pass e.g. grad_clip=1.0 (every phase), or a dict by phase name such as {'classifier': 1.0}"
    items = grad_clip.items() if isinstance(grad_clip, dict) else [(p, grad_clip) for p in phases]
    out = {}
    for name, value in items:
        if name not in phases:
            raise fail(fn, "grad_clip", f"keys among the phase names {phases}", repr(name), fix)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
            where = f"grad_clip[{name!r}]" if isinstance(grad_clip, dict) else "grad_clip"
            raise fail(fn, where, "a finite max norm > 0 (None: no clipping)", repr(value)[:100], fix)
        out[name] = float(value)
    return out


@contextlib.contextmanager
def clip_gradients(optimizers: dict[str, torch.optim.Optimizer],
                   max_norms: dict[str, float]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, ``optimizers[name].step()`` first clips its gradients to
    ``max_norms[name]``; yields a dict that receives each stepped phase's norm (a tensor,
    before clipping), for the caller to read and clear. Enter it inside
    :func:`egl.train.distributed.sync_optimizers`, so that the averaging runs first."""
    norms: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str, max_norm: float) -> Any:
        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if grads:
                norms[name] = clip_grad_norm(grads, max_norm)
        return hook

    for name, max_norm in max_norms.items():
        handles.append(optimizers[name].register_step_pre_hook(hook_for(name, max_norm)))
    try:
        yield norms
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def clip_grad_norm(grads: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` with the norm taken in float32: a float16 or bfloat16
    gradient's norm in its own dtype overflows (float16: 40000 in 10 entries is inf, and the clip
    then zeroes the step) or is rounded. Returns the total norm before clipping (float32); no host
    read (the clip factor stays a tensor)."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    first = grads[0].device
    per_tensor = [n.to(first) for group in groups.values()
                  for n in torch._foreach_norm(group, 2, dtype=torch.float32)]
    total = torch.linalg.vector_norm(torch.stack(per_tensor), 2)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # (torch's epsilon)
    for (device, dtype), group in groups.items():
        c = coef.to(device)
        if dtype in (torch.float16, torch.bfloat16):  # a small factor is subnormal (or coarse) in 16 bits
            for g in group:
                g.copy_(g.float().mul_(c))
        else:
            torch._foreach_mul_(group, c.to(dtype=dtype))
    return total


def read_norms(norms: dict[str, torch.Tensor]) -> dict[str, float]:
    """``{"<phase>/grad_norm": value}`` for the phases that stepped, in one read; clears ``norms``."""
    if not norms:
        return {}
    names = list(norms)
    values = torch.stack([norms[n].detach().float().to(norms[names[0]].device) for n in names]).tolist()
    norms.clear()
    return {f"{n}/grad_norm": v for n, v in zip(names, values)}
