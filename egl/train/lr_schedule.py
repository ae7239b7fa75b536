"""Learning-rate schedules for :func:`egl.train.fit`: linear warm-up, then constant, cosine or linear decay.

DomainBed and ALIGN train at a constant learning rate (``"constant"``, the default, with no
warm-up: every step at the optimiser's own rate, as before schedules existed). Fine-tuning a
pretrained backbone commonly warms up and decays; :class:`LRSchedule` covers the usual shapes,
and ``fit(schedulers=...)`` takes any ``torch.optim.lr_scheduler`` for the rest.

A schedule is indexed by the run's step (not by how often a phase has run): at step ``t`` every
phase's learning rate is its base rate times ``factor(t)``, so ALIGN's masker, which joins after
the warm-up, starts at the rate the schedule has reached by then.
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from egl._check import check_choice, check_int, fail

__all__ = ["LRSchedule", "SHAPES", "resolve_schedulers", "step_schedulers"]

#: What follows the warm-up.
SHAPES = ("constant", "cosine", "linear")

_FN = "egl.train.LRSchedule"


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate factor per step: ``warmup`` steps rising linearly to 1, then ``shape``.

    Args:
        shape: ``"constant"`` (1 after the warm-up), ``"cosine"`` (half a cosine from 1 down
            toward ``final``: torch's ``CosineAnnealingLR`` with ``T_max = steps - warmup`` and
            ``eta_min = final * lr``) or ``"linear"`` (a straight line from 1 toward ``final``);
            both reach ``final`` one step after the last, so every step trains.
        warmup: steps of linear warm-up: step ``t < warmup`` runs at ``(t + 1) / warmup`` of the
            rate (so step 0 already trains, at ``1 / warmup``); 0: none.
        final: the factor the decay ends at, in [0, 1] (0: timm's and torchvision's cosine
            default; ignored by ``"constant"``).

    Example:
        >>> s = LRSchedule("cosine", warmup=2, final=0.1)
        >>> [round(s.factor(t, steps=6), 3) for t in range(6)]
        [0.5, 1.0, 1.0, 0.868, 0.55, 0.232]
    """

    shape: str = "constant"
    warmup: int = 0
    final: float = 0.0

    def __post_init__(self) -> None:
        _check_fields(self.shape, self.warmup, self.final, _FN, "")

    @classmethod
    def parse(cls, spec: object, fn: str, arg: str) -> LRSchedule:
        """``spec`` as a schedule: an :class:`LRSchedule`, a shape name, or a dict of its fields."""
        if isinstance(spec, LRSchedule):
            return spec
        if isinstance(spec, str):
            check_choice(spec, SHAPES, fn, arg)
            return cls(spec)
        if isinstance(spec, dict) and set(spec) <= {"shape", "warmup", "final"}:
            fields = {"shape": "constant", "warmup": 0, "final": 0.0, **spec}
            _check_fields(fields["shape"], fields["warmup"], fields["final"], fn, f"{arg}.")  # naming arg.warmup
            return cls(**fields)
        raise fail(fn, arg, f"one of {list(SHAPES)}, a dict with keys among ['shape', 'warmup', 'final'], or an "
                   "egl.train.LRSchedule", repr(spec)[:100], "Pass e.g. 'cosine' or {'shape': 'cosine', 'warmup': 500}")

    def factor(self, t: int, steps: int) -> float:
        """The factor at step ``t`` (0-based) of a ``steps``-step run."""
        if t < self.warmup:
            return (t + 1) / self.warmup
        if self.shape == "constant":
            return 1.0
        span = max(steps - self.warmup, 1)  # `final` one step after the last: no step is spent at it
        p = min((t - self.warmup) / span, 1.0)
        shape = 0.5 * (1.0 + math.cos(math.pi * p)) if self.shape == "cosine" else 1.0 - p
        return self.final + (1.0 - self.final) * shape

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer],
                   steps: int) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
        """One ``LambdaLR`` per optimiser following this schedule over ``steps`` steps."""
        return {name: torch.optim.lr_scheduler.LambdaLR(opt, _Factor(self, steps)) for name, opt in optimizers.items()}


def _check_fields(shape: object, warmup: object, final: object, fn: str, prefix: str) -> None:
    check_choice(shape, SHAPES, fn, prefix + "shape")
    check_int(warmup, fn, prefix + "warmup", fix=f"Pass e.g. {prefix}warmup=500 (steps), or 0 for none")
    if isinstance(final, bool) or not isinstance(final, numbers.Real) or not 0 <= final <= 1:
        raise fail(fn, prefix + "final", "a factor in [0, 1]", repr(final)[:100],
                   f"Pass e.g. {prefix}final=0.0 (decay to zero) or {prefix}final=0.01")


class _Factor:
    """``LambdaLR``'s function as an object: its state (schedule and length) goes into the
    scheduler's ``state_dict``, so a checkpoint holds the schedule it was trained with."""

    def __init__(self, schedule: LRSchedule, steps: int) -> None:
        self.shape, self.warmup, self.final, self.steps = schedule.shape, schedule.warmup, schedule.final, steps

    def __call__(self, t: int) -> float:
        return LRSchedule(self.shape, self.warmup, self.final).factor(t, self.steps)

    def __repr__(self) -> str:
        return f"LRSchedule({self.shape!r}, warmup={self.warmup}, final={self.final}) over {self.steps} steps"


def describe_schedulers(schedulers: dict[str, Any]) -> dict[str, str]:
    """Phase name -> a short description of its scheduler, for the log's header."""
    out = {}
    for name, s in schedulers.items():
        fns = getattr(s, "lr_lambdas", None)
        out[name] = repr(fns[0]) if fns and isinstance(fns[0], _Factor) else type(s).__name__
    return out


def resolve_schedulers(lr_schedule: object, schedulers: object, optimizers: dict[str, torch.optim.Optimizer],
                       steps: int, fn: str) -> dict[str, Any]:
    """``fit``'s schedulers: built from ``lr_schedule``, or ``schedulers`` checked against the
    run's optimisers (one per phase name at most, each built on that phase's optimiser)."""
    if lr_schedule is not None and schedulers is not None:
        raise fail(fn, "schedulers", "None when lr_schedule is given (one way to set the learning rate)",
                   "both", "Pass lr_schedule (egl's shapes) or schedulers (your own), not both")
    if lr_schedule is not None:
        return LRSchedule.parse(lr_schedule, fn, "lr_schedule").schedulers(optimizers, steps)
    if schedulers is None:
        return {}
    fix = ("Build each on the optimiser of its phase and pass those optimisers too: opts = "
           "recipe.configure_optimizers(); fit(..., optimizers=opts, schedulers={'classifier': "
           "torch.optim.lr_scheduler.OneCycleLR(opts['classifier'], ...)})")
    if not isinstance(schedulers, dict):
        raise fail(fn, "schedulers", f"a dict of learning-rate schedulers keyed by phase name {sorted(optimizers)}",
                   type(schedulers).__name__, fix)
    unknown = sorted(str(k) for k in schedulers if k not in optimizers)
    if unknown:
        raise fail(fn, "schedulers", f"keys among the phase names {sorted(optimizers)}", f"{unknown}", fix)
    from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

    for name, s in schedulers.items():
        if isinstance(s, ReduceLROnPlateau) or not isinstance(s, LRScheduler):
            what = "ReduceLROnPlateau, which steps on a metric" if isinstance(s, ReduceLROnPlateau) else \
                type(s).__name__
            raise fail(fn, "schedulers", "torch.optim.lr_scheduler schedulers that step once per training step",
                       f"'{name}': {what}", "Pass e.g. CosineAnnealingLR, OneCycleLR or LambdaLR (or lr_schedule=)")
        if s.optimizer is not optimizers[name]:
            raise fail(fn, "schedulers", f"the '{name}' scheduler built on the '{name}' optimiser this run steps",
                       "one built on another optimiser (fit builds its own when optimizers= is not given)", fix)
    return dict(schedulers)


def step_schedulers(schedulers: dict[str, Any]) -> None:
    """Advance every scheduler by one run step. A phase that has not stepped yet (ALIGN's masker
    in its warm-up) or skipped a step (float16 overflow) follows the run's step all the same:
    torch's warning about a scheduler stepping before its optimiser is the intended behaviour here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        for s in schedulers.values():
            s.step()
