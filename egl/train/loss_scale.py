"""Dynamic loss scaling for float16 mixed precision, one scaler per recipe phase.

float16 keeps gradients down to about 6e-8; smaller ones flush to zero. The loss is multiplied
by a scale before the backward and every gradient divided by it afterwards; a step whose
gradients overflowed (inf or NaN after scaling) is skipped and the scale halved, and after
``growth_interval`` steps without overflow the scale doubles. This is what
``torch.amp.GradScaler`` does; egl keeps its own so that the overflow flag travels in the
recipe's one read per phase and, under ``torch.distributed``, every rank skips the same steps
(:meth:`egl.recipes.Recipe.training_step`). Scales are powers of two, so multiplying and
dividing by them adds no rounding. Two differences from GradScaler: a non-finite *loss* still
raises :class:`egl.recipes.NonFiniteLossError` (only non-finite *gradients* skip the step;
the one exception is a loss made non-finite by a gradient taken inside it that overflowed,
see :mod:`egl._amp`), and a scale that falls below 1 (gradients not finite at any scale)
raises it too, instead of skipping steps for ever.

Example:
    >>> import torch
    >>> scaler = LossScaler(init_scale=2.0**4)
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> scaler.scale((w * 3).sum()).backward()
    >>> float(scaler.unscale_([w])), w.grad.tolist()
    (0.0, [3.0, 3.0])
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from egl._check import check_int, describe, fail

__all__ = ["LossScaler"]

FN = "egl.train.LossScaler"


def _power_of_two(value: float, arg: str, *, above_one: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    ok = ok and math.frexp(value)[0] == 0.5 and (value > 1 if above_one else value < 1)
    if not ok:
        expected = "a power of two above 1" if above_one else "a power of two below 1"
        raise fail(FN, arg, expected + " (so that scaling stays exact)", repr(value),
                   f"Pass e.g. {arg}={2.0 if above_one else 0.5}")
    return float(value)


class LossScaler:
    """Dynamic loss scale of one phase.

    Args:
        init_scale: first scale (2**16, GradScaler's default); a power of two >= 1 (a scale
            below 1 shrinks gradients toward underflow, and raises once reached in training).
        growth_factor: scale multiplier after ``growth_interval`` steps without overflow (2);
            a power of two above 1.
        backoff_factor: scale multiplier after an overflow (0.5); a power of two below 1.
        growth_interval: steps without overflow before the scale grows (2000); an int >= 1.

    Raises:
        InputError: an argument outside these ranges (a bool is not a number here).
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000) -> None:
        if not (isinstance(init_scale, (int, float)) and not isinstance(init_scale, bool)
                and math.isfinite(init_scale) and init_scale >= 1 and math.frexp(init_scale)[0] == 0.5):
            raise fail(FN, "init_scale", "a power of two >= 1 (a power of two keeps scaling exact; a scale below 1 "
                       "would shrink the gradients toward float16's underflow)", repr(init_scale),
                       "Pass e.g. init_scale=2.0**16 (GradScaler's default), or precision='bf16' for no loss scaling")
        self.growth_factor = _power_of_two(growth_factor, "growth_factor", above_one=True)
        self.backoff_factor = _power_of_two(backoff_factor, "backoff_factor", above_one=False)
        check_int(growth_interval, FN, "growth_interval", low=1, fix="Pass e.g. growth_interval=2000")
        self.growth_interval = growth_interval
        self.scale_value = float(init_scale)
        self._good_steps = 0

    def scale(self, loss: Tensor) -> Tensor:
        """``loss`` times the current scale (run the backward on this)."""
        if not isinstance(loss, Tensor) or not loss.is_floating_point():  # (a list: "can't multiply sequence")
            fix = ("Convert it, e.g. loss.float()" if isinstance(loss, Tensor)
                   else "Sum the loss terms into one tensor first, e.g. sum(losses)")
            raise fail(f"{FN}.scale", "loss", "a floating-point tensor (the loss to run the backward on)",
                       describe(loss), fix)
        return loss * self.scale_value

    def unscale_(self, params: Iterable[torch.nn.Parameter]) -> Tensor:
        """Divide every gradient of ``params`` by the scale, in place.

        Returns:
            A one-element float32 tensor on the gradients' accelerator if any, else the CPU: 1 if
            a gradient held an inf or NaN after scaling (the step must be skipped), else 0.
            Nothing is read back.
        """
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        seen: set[int] = set()
        for p in params:
            if p.grad is None or id(p) in seen:  # a parameter listed twice is unscaled once
                continue
            seen.add(id(p))
            if p.grad.is_sparse:
                raise fail(f"{FN}.unscale_", "params", "dense gradients", f"a sparse gradient of shape {list(p.shape)}",
                           "Use dense embeddings, or precision='bf16' (no loss scaling)")
            groups.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        flags = []
        for (device, _), grads in groups.items():
            found = torch.zeros(1, device=device)
            inv = torch.full((1,), 1.0 / self.scale_value, device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found, inv)
            flags.append(found)
        if not flags:
            return torch.zeros(1)
        # gather on an accelerator if there is one: a copy from it to the CPU would need a wait
        target = next((f.device for f in flags if f.device.type != "cpu"), flags[0].device)
        return torch.stack([f.to(target) for f in flags]).amax().reshape(1)

    def update(self, overflow: bool) -> None:
        """After a step: back off on overflow, else count towards growth."""
        if overflow:
            self.scale_value *= self.backoff_factor
            self._good_steps = 0
            return
        self._good_steps += 1
        if self._good_steps >= self.growth_interval:
            self.scale_value *= self.growth_factor
            self._good_steps = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale_value, "good_steps": self._good_steps, "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = {"scale", "good_steps", "growth_factor", "backoff_factor", "growth_interval"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise fail(f"{FN}.load_state_dict", "state", f"a dict with keys {sorted(keys)}", describe(state),
                       "Pass what LossScaler.state_dict() returned")
        scale = state["scale"]  # any positive power of two: checkpoints of older versions may hold one below 1
        if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
                and scale > 0 and math.frexp(scale)[0] == 0.5):
            raise fail(f"{FN}.load_state_dict", "state['scale']", "a positive power of two", repr(scale)[:100],
                       "Pass what LossScaler.state_dict() returned")
        checked = LossScaler(2.0**16, state["growth_factor"], state["backoff_factor"], state["growth_interval"])
        self.scale_value, self.growth_factor = float(scale), checked.growth_factor
        self.backoff_factor, self.growth_interval = checked.backoff_factor, checked.growth_interval
        self._good_steps = int(state["good_steps"])

    def __repr__(self) -> str:
        return (f"LossScaler(scale={self.scale_value:g}, growth_factor={self.growth_factor:g}, "
                f"backoff_factor={self.backoff_factor:g}, growth_interval={self.growth_interval})")
