"""Deferred value checks: one device-to-host read per training phase instead of one per check.

Checking tensor *values* (a mask in [0, 1], a saliency map in [0, 1]) needs them on the host.
On a GPU every such read waits for the queue to drain, and the device then idles while the
host queues the next kernels. Inside :func:`deferred_checks` (which
:meth:`egl.recipes.Recipe.training_step` opens around a step),
:func:`egl._check.check_range` queues a verdict and the min/max on the device and returns
at once; the recipe reads them in the same transfer as its loss terms, after the backward is
queued, and raises the first failed check's error (the message an immediate check gives)
before the optimiser steps.

Only checks whose failure cannot crash the device first are deferred. Class indices are
checked at once (CUDA's cross-entropy and ``gather`` device-assert on an index out of range,
which ends the process without a message), but once per tensor inside the block (ALIGN's
three passes over one batch check its labels once), and without a device read when the
labels' range was read on the host before they moved to the device. (Explainers, which do
every gather with the targets themselves, read an unknown range at the end of their own call,
with clamped indices until then: :mod:`egl.explainers._targets`.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

from egl.errors import InputError

__all__ = ["DeferredChecks", "Queued", "deferred_checks", "active", "carry_range"]

Verdict = Callable[[Sequence[float]], "InputError | None"]


class Queued:
    """Value checks queued since the last :meth:`DeferredChecks.take`."""

    def __init__(self) -> None:
        self.stats: list[Tensor] = []  # 1-D float32 tensors on the device; read them in one transfer
        self._verdicts: list[tuple[int, Verdict]] = []

    def add(self, stats: Tensor, verdict: Verdict) -> None:
        self._verdicts.append((stats.numel(), verdict))
        self.stats.append(stats)

    def first_error(self, values: Sequence[float]) -> InputError | None:
        """The error of the first failed check, given the values of :attr:`stats` read back."""
        at = 0
        for n, verdict in self._verdicts:
            err = verdict(values[at:at + n])
            if err is not None:
                return err
            at += n
        return None


class DeferredChecks:
    """The state of one :func:`deferred_checks` block."""

    def __init__(self) -> None:
        self._queued = Queued()
        # (id(t), key) -> (t, its version then, value); t is kept alive until the block ends,
        # so its id cannot be reused by another tensor
        self._known: dict[tuple[int, object], tuple[Tensor, int, object]] = {}

    def add(self, stats: Tensor, verdict: Verdict) -> None:
        """Queue ``stats`` (a 1-D float32 tensor on the device) and the function that judges them."""
        self._queued.add(stats, verdict)

    def take(self) -> Queued:
        """The checks queued so far; the queue starts empty again."""
        queued, self._queued = self._queued, Queued()
        return queued

    def checked(self, t: Tensor, key: object) -> bool:
        """True if ``t``, unchanged since, passed the check ``key`` inside this block."""
        return self._get(t, ("passed", key)) is not None

    def mark(self, t: Tensor, key: object) -> None:
        """Record that ``t`` passed the check ``key``."""
        self._put(t, ("passed", key), True)

    def note_range(self, t: Tensor, lo: int, hi: int) -> None:
        """Record the min and max of an integer tensor, known on the host without a device read
        (labels read before they were moved to the device: :class:`egl.recipes.Batch`)."""
        self._put(t, "range", (lo, hi))

    def range_of(self, t: Tensor) -> tuple[int, int] | None:
        """The recorded ``(min, max)`` of ``t`` if it is unchanged since, else None."""
        return self._get(t, "range")  # type: ignore[return-value]

    def _put(self, t: Tensor, key: object, value: object) -> None:
        if not t.is_inference():  # inference tensors have no version counter: never recorded
            self._known[(id(t), key)] = (t, t._version, value)

    def _get(self, t: Tensor, key: object) -> object:
        hit = self._known.get((id(t), key))
        if hit is None or hit[0] is not t or t.is_inference() or hit[1] != t._version:
            return None
        return hit[2]


_ACTIVE: ContextVar[DeferredChecks | None] = ContextVar("egl_deferred_checks", default=None)


def active() -> DeferredChecks | None:
    """The innermost open :func:`deferred_checks` block's checks, or None."""
    return _ACTIVE.get()


@contextmanager
def deferred_checks() -> Iterator[DeferredChecks]:
    """Defer value checks inside the block; the caller reads and judges them afterwards."""
    checks = DeferredChecks()
    token = _ACTIVE.set(checks)
    try:
        yield checks
    finally:
        _ACTIVE.reset(token)


def carry_range(src: Tensor, dst: Tensor) -> None:
    """Inside a block, give ``dst`` the host-known range of ``src`` (``dst`` holds only values of
    ``src``, e.g. ``torch.cat([y, y])``), so that checking it needs no device read either."""
    checks = active()
    known = checks.range_of(src) if checks is not None else None
    if checks is not None and known is not None:
        checks.note_range(dst, *known)
