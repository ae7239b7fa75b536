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

import contextlib
import math
import numbers
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from egl._check import check_choice, check_int, check_known_keys, fail

__all__ = ["LRSchedule", "SHAPES", "resolve_schedulers", "step_schedulers", "quiet_order_warning", "check_resumed"]

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
        object.__setattr__(self, "warmup", int(self.warmup))  # (NumPy numbers would not load from a checkpoint
        object.__setattr__(self, "final", float(self.final))  # with weights_only=True)

    @classmethod
    def parse(cls, spec: object, fn: str, arg: str) -> LRSchedule:
        """``spec`` as a schedule: an :class:`LRSchedule`, a shape name, or a dict of its fields."""
        if isinstance(spec, LRSchedule):
            return spec
        if isinstance(spec, str):
            check_choice(spec, SHAPES, fn, arg)
            return cls(spec)
        if isinstance(spec, dict):
            check_known_keys(spec, ["shape", "warmup", "final"], fn, arg, "LRSchedule's fields")
            fields = {"shape": "constant", "warmup": 0, "final": 0.0, **spec}
            _check_fields(fields["shape"], fields["warmup"], fields["final"], fn, f"{arg}.")  # naming arg.warmup
            return cls(**fields)
        raise fail(fn, arg, f"one of {list(SHAPES)}, a dict with keys among ['shape', 'warmup', 'final'], or an "
                   "egl.train.LRSchedule", repr(spec)[:100], "Pass e.g. 'cosine' or {'shape': 'cosine', 'warmup': 500}")

    def factor(self, t: int, steps: int) -> float:
        """The factor at step ``t`` (0-based) of a ``steps``-step run."""
        return _factor(self.shape, self.warmup, self.final, t, steps)

    def schedulers(self, optimizers: dict[str, torch.optim.Optimizer],
                   steps: int) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
        """One ``LambdaLR`` per optimiser following this schedule over ``steps`` steps."""
        return {name: torch.optim.lr_scheduler.LambdaLR(opt, _Factor(self, steps)) for name, opt in optimizers.items()}


def _factor(shape: str, warmup: int, final: float, t: int, steps: int) -> float:
    """:meth:`LRSchedule.factor` on checked fields (what each scheduler step calls)."""
    if t < warmup:
        return (t + 1) / warmup
    if shape == "constant":
        return 1.0
    span = max(steps - warmup, 1)  # `final` one step after the last: no step is spent at it
    p = min((t - warmup) / span, 1.0)
    decay = 0.5 * (1.0 + math.cos(math.pi * p)) if shape == "cosine" else 1.0 - p
    return final + (1.0 - final) * decay


def _check_fields(shape: object, warmup: object, final: object, fn: str, prefix: str) -> None:
    check_choice(shape, SHAPES, fn, prefix + "shape")
    check_int(int(warmup) if isinstance(warmup, numbers.Integral) and not isinstance(warmup, bool) else warmup,
              fn, prefix + "warmup", fix=f"Pass e.g. {prefix}warmup=500 (steps), or 0 for none")  # (NumPy ints too)
    if isinstance(final, bool) or not isinstance(final, numbers.Real) or not 0 <= final <= 1:
        raise fail(fn, prefix + "final", "a factor in [0, 1]", repr(final)[:100],
                   f"Pass e.g. {prefix}final=0.0 (decay to zero) or {prefix}final=0.01")


class _Factor:
    """``LambdaLR``'s function as an object: its state (schedule and length) goes into the
    scheduler's ``state_dict``, so a checkpoint holds the schedule it was trained with (and a
    resume with another schedule or length is refused: :func:`check_resumed`)."""

    def __init__(self, schedule: LRSchedule, steps: int) -> None:
        self.shape, self.warmup, self.final, self.steps = schedule.shape, schedule.warmup, schedule.final, steps

    def __call__(self, t: int) -> float:
        return _factor(self.shape, self.warmup, self.final, t, self.steps)

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
    run's optimisers (one per phase name at most, each built on that phase's optimiser).
    ``lr_schedule="none"`` is None (the config's spelling of no schedule)."""
    if lr_schedule == "none":
        lr_schedule = None
    if lr_schedule is not None and schedulers is not None:
        raise fail(fn, "schedulers", "None when lr_schedule is given (one way to set the learning rate)",
                   "both", "Pass lr_schedule (egl's shapes) or schedulers (your own), not both")
    if lr_schedule is not None:
        schedule = LRSchedule.parse(lr_schedule, fn, "lr_schedule")
        if schedule.warmup >= steps > 0:
            warnings.warn(f"{fn}: lr_schedule's warmup={schedule.warmup} is not shorter than steps={steps}: the rate "
                          f"never reaches its full value (at most {steps / schedule.warmup:.2g} of it) and "
                          f"{schedule.shape!r} never starts. Shorten the warm-up or train longer.", stacklevel=3)
        return schedule.schedulers(optimizers, steps)
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
    """Advance every scheduler by one run step (inside :func:`quiet_order_warning`)."""
    for s in schedulers.values():
        s.step()


@contextlib.contextmanager
def quiet_order_warning(active: bool) -> Iterator[None]:
    """Within the block, torch's warning that a scheduler stepped before its optimiser is off. A
    phase that has not stepped yet (ALIGN's masker in its warm-up) or skipped a step (float16
    overflow) follows the run's step all the same: that is the intended behaviour here. Entered
    once around the training loop: ``catch_warnings`` resets Python's once-per-location
    bookkeeping, so entering it every step would repeat every once-only warning of the run."""
    if not active:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        yield


def check_resumed(saved: dict[str, Any], schedulers: dict[str, Any], fn: str, where: str) -> None:
    """The run's :class:`LRSchedule` schedulers are the checkpoint's (shape, warm-up, final factor and
    length): loading the state would otherwise replace the run's schedule with the checkpoint's
    silently (a resume with more steps would train the extra steps at the checkpoint's end rate)."""
    for name, s in schedulers.items():
        fns = getattr(s, "lr_lambdas", None)
        mine = fns[0] if fns and isinstance(fns[0], _Factor) else None
        theirs = (saved.get(name) or {}).get("lr_lambdas") or [None]
        if mine is None or not isinstance(theirs[0], dict):
            continue  # a user's scheduler: its own state_dict rules
        if theirs[0] != mine.__dict__:
            was = _Factor.__new__(_Factor)
            was.__dict__.update(theirs[0])
            raise fail(fn, "lr_schedule", f"the schedule the checkpoint in {where} was trained with: {was!r}",
                       repr(mine), "Resume with that lr_schedule and steps, or resume=False to start afresh")
