"""Checks shared by the metrics that call an explainer themselves (sensitivity, randomisation)."""

from __future__ import annotations

import numbers
from typing import Any

from torch import Tensor, nn

from egl._check import check_finite, check_model_dtype, check_shape, describe, fail

__all__ = ["check_model_and_images", "build_registered", "check_seed", "check_kwargs", "check_maps"]


def check_model_and_images(model: object, x: object, fn: str) -> Tensor:
    """``model`` a module and ``x`` a non-empty finite ``[B, C, H, W]`` batch of its device and dtype."""
    from egl.explainers.base import model_device

    if not isinstance(model, nn.Module):
        raise fail(fn, "model", "a torch.nn.Module", describe(model), "Pass the classifier module itself")
    t = check_shape(x, "B C H W", fn, "x")
    if t.shape[0] == 0:
        raise fail(fn, "x", "at least one image", describe(t), "Pass a non-empty batch")
    dev = model_device(model)
    if dev is not None and dev != t.device:
        raise fail(fn, "x", f"a tensor on the model's device ({dev})", describe(t),
                   f"Move the batch with x.to('{dev}')")
    check_model_dtype(model, t, fn, "x")
    return check_finite(t.detach(), fn, "x")


def check_kwargs(kwargs: object, fn: str) -> dict[str, Any]:
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise fail(fn, "explainer_kwargs", "None or a mapping of the explainer's arguments", repr(kwargs)[:100],
                   "Pass e.g. explainer_kwargs={'layer': 'layer3'}")
    return dict(kwargs)


def build_registered(name: str, model: nn.Module, kwargs: dict[str, Any], fn: str) -> Any:
    """The registered explainer ``name`` on ``model``; an unknown name or argument is named as
    ``fn``'s ``explainer`` / ``explainer_kwargs``."""
    from egl.registry import _build, _lookup

    factory = _lookup("explainer", name, fn, "explainer")
    return _build(factory, "explainer", name, fn, (model,), kwargs, arg="explainer_kwargs")


def check_seed(seed: object, fn: str, steps: int = 1) -> int:
    """An int in ``[0, 2**63 - steps]`` (``seed + i`` for ``i < steps`` stays a valid torch seed)."""
    top = 2**63 - steps
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= top:
        raise fail(fn, "seed", f"an int in [0, 2**63 - {steps}]", repr(seed)[:100], "Pass e.g. seed=0")
    return int(seed)


def check_maps(s: object, batch: int, shape: tuple[int, ...] | None, fn: str, when: str) -> Tensor:
    """An explainer's output: finite ``[batch, 1, h, w]`` maps, of ``shape`` when given (the first
    call's), detached; ``when`` ends the expectation ("at every step", "for every input")."""
    t = check_shape(s, "B 1 h w", fn, "explainer's output")
    if t.shape[0] != batch or (shape is not None and tuple(t.shape) != shape):
        raise fail(fn, "explainer", f"maps of shape {list(shape or (batch, 1, 'h', 'w'))} {when}",
                   describe(t), "Return one [B, 1, h, w] map per image, at one resolution")
    return check_finite(t.detach(), fn, "explainer's output")
