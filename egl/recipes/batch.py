"""One batch format for every recipe: ``(x, y)``, ``(x, y, domain)`` or a dict with keys
``image``, ``label`` and optionally ``domain``, ``mask``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from egl._check import check_shape, describe, fail

__all__ = ["Batch", "as_batch"]


@dataclass
class Batch:
    """A parsed batch. ``domain`` and ``mask`` are ``None`` when the data has none.

    ``label_range`` is ``(min, max)`` of ``y`` when :func:`as_batch` read it on the host (labels
    that arrive on the CPU, as a DataLoader gives them): recipes then check labels against the
    model's classes without reading them back from the device. It is trusted only while ``y``
    is the tensor it was read from, unchanged (:meth:`known_label_range`). Domains that arrive
    on the CPU keep their host copy for the same reason (:meth:`domain_on_host`): IRM and Mixup
    group samples by domain on the host instead of synchronising with the device.
    """

    x: Tensor
    y: Tensor
    domain: Tensor | None = None
    mask: Tensor | None = None
    label_range: tuple[int, int] | None = None
    _labels_read: tuple[Tensor, int] | None = field(default=None, repr=False, compare=False)
    # (host copy, its version, the domain tensor it stands for, that tensor's version)
    _domain_host: tuple[Tensor, int, Tensor, int] | None = field(default=None, repr=False, compare=False)

    def to(self, device: torch.device | str) -> "Batch":
        """The batch on ``device`` (the label range follows the labels if they are unchanged)."""
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)
        known = self.known_label_range()
        y = self.y.to(device, non_blocking=True)
        host, domain = self.domain_on_host(), mv(self.domain)
        return Batch(self.x.to(device, non_blocking=True), y, domain, mv(self.mask), known, _read_mark(y),
                     _host_mark(host, domain))

    def known_label_range(self) -> tuple[int, int] | None:
        """``label_range`` if ``y`` is still the tensor it was read from, unchanged; else None."""
        mark = self._labels_read
        if self.label_range is None or mark is None or mark[0] is not self.y or mark[1] != self.y._version:
            return None
        return self.label_range


    def domain_on_host(self) -> Tensor | None:
        """The domains as a CPU tensor when they arrived on the CPU and are unchanged; else None."""
        mark = self._domain_host
        if mark is None or self.domain is None or mark[2] is not self.domain:
            return None
        host, host_version, cur, cur_version = mark
        return host if host._version == host_version and cur._version == cur_version else None


def _host_mark(host: Tensor | None, cur: Tensor | None) -> tuple[Tensor, int, Tensor, int] | None:
    if host is None or cur is None or host.is_inference() or cur.is_inference():
        return None
    return host, host._version, cur, cur._version


def _read_mark(t: Tensor) -> tuple[Tensor, int] | None:
    """``(t, version)``; None for inference tensors, which have no version counter."""
    return None if t.is_inference() else (t, t._version)


def as_batch(batch: Any, fn: str = "egl.recipes.as_batch") -> Batch:
    """Parse any supported batch layout into a :class:`Batch` (already-parsed batches pass through)."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, dict):
        missing = [k for k in ("image", "label") if k not in batch]
        if missing:
            raise fail(fn, "batch", "a dict with keys 'image' and 'label' (optionally 'domain', 'mask')",
                       f"a dict with keys {sorted(batch)}", f"Add {missing} to the batch")
        x, y, d, m = batch["image"], batch["label"], batch.get("domain"), batch.get("mask")
    elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        x, y = batch[0], batch[1]
        d = batch[2] if len(batch) == 3 else None
        m = None
    else:
        raise fail(fn, "batch", "(x, y), (x, y, domain) or a dict with 'image' and 'label'", describe(batch),
                   "Return one of these layouts from the dataset")
    x = check_shape(x, "B C H W", fn, "batch image")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise fail(fn, "batch label", f"an integer tensor of shape [{x.shape[0]}]", describe(y),
                   "Give one integer class label per image")
    if d is not None and (not isinstance(d, Tensor) or d.shape != y.shape or d.is_floating_point()):
        raise fail(fn, "batch domain", f"an integer tensor of shape [{x.shape[0]}]", describe(d),
                   "Give one integer domain index per image")
    y = y.long()
    mark = _read_mark(y) if y.device.type == "cpu" and y.numel() else None
    label_range = (int(y.min()), int(y.max())) if mark is not None else None
    d = None if d is None else d.long()
    host = d if d is not None and d.device.type == "cpu" else None
    return Batch(x, y, d, m, label_range, mark, _host_mark(host, d))
