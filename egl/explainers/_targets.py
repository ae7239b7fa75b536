"""Class targets of one explainer call, and the check that they name classes of the model.

The class range can only be checked once the logits give the number of classes. Reading a
device tensor's range stalls a GPU: the host waits for the forward to finish, and the device
then idles while the host queues the maps' kernels. So:

* targets given on the host (an int, a list, a CPU tensor) are checked against the host copy
  of their range, taken when :func:`targets` builds the device tensor: no device read; and
  they are uploaded without a blocking copy (which would wait for the queued work, as a read does);
* targets already on an accelerator are read once, and an explainer that gathers with them
  itself (Grad-CAM, input gradients) reads them at the *end* of its call
  (:meth:`Targets.index` with ``defer=True``, then :meth:`Targets.settle`): it gathers with
  indices clamped into range meanwhile (an out-of-range index device-asserts on CUDA, ending
  the process without a message), and raises the same error as an immediate check before it
  returns, so a wrong target never gives a map. On the CPU the read costs nothing and stays
  immediate (``DEFER_ON_CPU``, for tests).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from egl._check import describe, fail
from egl._deferred import active
from egl._transfer import host_tensor, upload

__all__ = ["Targets", "targets", "as_targets", "check_target_range"]

# Defer the range read of targets on the CPU too (tests set it to exercise the deferred path).
DEFER_ON_CPU = False


class Targets:
    """Class indices ``[B]`` (long) on the model's device, and their ``(min, max)`` when the host knows it."""

    def __init__(self, tensor: Tensor, known: tuple[int, int] | None = None) -> None:
        self.tensor = tensor
        self.known = known
        self._pending: tuple[Tensor, int, str] | None = None

    def index(self, num_classes: int, fn: str, *, defer: bool = False) -> Tensor:
        """Indices to gather with, checked against ``num_classes``.

        With ``defer`` (the caller calls :meth:`settle` before it returns), a range the host does
        not know is not read now: the indices come back clamped into ``[0, num_classes)`` and
        :meth:`settle` reads the range and raises. Without it, raises now.
        """
        t = self.tensor
        if not defer or self.known is not None or not t.numel() or _host_knows(t, num_classes) \
                or (t.device.type == "cpu" and not DEFER_ON_CPU):
            return check_target_range(t, num_classes, fn, known=self.known)
        self._pending = (torch.stack([t.min(), t.max()]), num_classes, fn)
        return t.clamp(0, num_classes - 1)

    def settle(self) -> None:
        """Read a deferred range (one device-to-host read) and raise if it fell outside."""
        if self._pending is None:
            return
        stats, num_classes, fn = self._pending
        self._pending = None
        lo, hi = stats.tolist()
        check_target_range(self.tensor, num_classes, fn, known=(lo, hi))


def _host_knows(t: Tensor, num_classes: int) -> bool:
    """Whether an open :func:`egl._deferred.deferred_checks` block already knows ``t``'s range."""
    checks = active()
    return checks is not None and (checks.checked(t, ("classes", num_classes)) or checks.range_of(t) is not None)


def _check_int64(lo: int, hi: int, fn: str) -> None:
    if lo < -2 ** 63 or hi >= 2 ** 63:
        raise fail(fn, "target", "class indices that fit in int64", f"{lo}..{hi}", "Check the label mapping")


def from_numpy(value: Any) -> Any:
    """A NumPy integer as a Python int, a NumPy array as a (CPU) tensor; anything else as it is."""
    kind = type(value).__module__.split(".")[0]
    if kind != "numpy":
        return value
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def targets(target: Any, batch: int, fn: str, device: torch.device) -> Targets | None:
    """Validate a target spec (int, list of ints, 0-D/1-D integer tensor, or None) into :class:`Targets`.

    The host-side range is kept when the spec is on the host (an int, a list, a CPU tensor).
    """
    if target is None:
        return None
    if isinstance(target, Targets):  # (a wrapper's targets, their range already known or checked)
        t = target.tensor
        if t.dim() != 1 or t.shape[0] != batch or t.dtype != torch.long or t.device != torch.device(device):
            raise fail(fn, "target", f"one int64 class index per sample (shape [{batch}]) on {device}", describe(t),
                       "Pass one target per image in x, on the model's device")
        return target
    if isinstance(target, bool):
        raise fail(fn, "target", "an int, a list of ints or a LongTensor of class indices",
                   describe(target), "Pass class indices, not booleans")
    target = from_numpy(target)
    if isinstance(target, int):
        _check_int64(target, target, fn)
        return Targets(torch.full((batch,), target, dtype=torch.long, device=device), (target, target))
    if isinstance(target, (list, tuple)):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise fail(fn, "target", "a list of int class indices", repr(list(target))[:120],
                       "Convert the entries to int")
        known = (min(target), max(target)) if len(target) else None
        if known is not None:
            _check_int64(*known, fn)
        if len(target) != batch:
            raise fail(fn, "target", f"one class index per sample (shape [{batch}])", describe(target),
                       "Pass one target per image in x, or a single int for all")
        return Targets(host_tensor(list(target), device, torch.long), known)
    if not isinstance(target, Tensor):
        raise fail(fn, "target", "an int, a list of ints or a LongTensor of class indices",
                   describe(target), "Pass class indices")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise fail(fn, "target", "an integer tensor of class indices", describe(target),
                   "Use target.long(), or argmax over probabilities")
    if target.dim() == 0:
        target = target.expand(batch)
    if target.dim() != 1 or target.shape[0] != batch:
        raise fail(fn, "target", f"one class index per sample (shape [{batch}])", describe(target),
                   "Pass one target per image in x, or a single int for all")
    known = None
    if target.device.type == "cpu" and torch.device(device).type != "cpu" and target.numel():
        lo, hi = torch.stack([target.min(), target.max()]).tolist()  # a host read: no device wait
        known = (int(lo), int(hi))
    return Targets(upload(target, device, torch.long), known)


def as_targets(target: Any, batch: int, fn: str, device: torch.device) -> Tensor | None:
    """Validate a target spec (int, list of ints, 0-D/1-D integer tensor, or None) to a ``[B]`` LongTensor.

    The class range is checked later by :func:`check_target_range`, once the logits are known.
    """
    t = targets(target, batch, fn, device)
    return None if t is None else t.tensor


def check_target_range(target: Tensor, num_classes: int, fn: str, *,
                       known: tuple[int, int] | None = None) -> Tensor:
    """Raise unless every target lies in ``[0, num_classes)`` (at most one device-to-host read).

    ``known``: the range, read already (no read then). Inside
    :func:`egl._deferred.deferred_checks` a tensor is checked once per ``num_classes``, and not
    read at all when its range is already known on the host.
    """
    checks = active()
    key = ("classes", num_classes)
    if not target.numel() or (checks is not None and checks.checked(target, key)):
        return target
    if known is None and checks is not None:
        known = checks.range_of(target)
    lo, hi = known if known is not None else torch.stack([target.min(), target.max()]).tolist()
    if lo < 0 or hi >= num_classes:
        raise fail(fn, "target", f"class indices in [0, {num_classes - 1}] (the model has {num_classes} outputs)",
                   f"values in [{lo}, {hi}]", "Check the label mapping, or the model's num_classes")
    if checks is not None:
        checks.mark(target, key)
    return target
