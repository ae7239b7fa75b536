"""One batch format for every recipe: ``(x, y)``, ``(x, y, domain)`` or a dict with keys
``image``, ``label`` and optionally ``domain``, ``mask``, ``annotated`` (which images' masks are
annotations: a partially annotated batch, see :class:`egl.data.PartialMasks`) and ``shortcut``
(the class a spurious feature of each image stands for, -1 for none: GroupDRO's groups)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from egl._check import check_shape, describe, fail
from egl._transfer import upload

__all__ = ["Batch", "as_batch"]


@dataclass(frozen=True)
class _HostCopy:
    """A CPU tensor standing for ``cur`` (itself, or what it was copied to), while neither changed."""

    host: Tensor
    host_version: int
    cur: Tensor
    cur_version: int

    @staticmethod
    def of(host: Tensor | None, cur: Tensor | None) -> "_HostCopy | None":
        if host is None or cur is None or host.is_inference() or cur.is_inference():  # no version counter
            return None
        return _HostCopy(host, host._version, cur, cur._version)

    def stands_for(self, t: Tensor | None) -> bool:
        return (t is self.cur and self.cur._version == self.cur_version
                and self.host._version == self.host_version)


@dataclass
class Batch:
    """A parsed batch. ``domain`` and ``mask`` are ``None`` when the data has none; ``annotated``
    (bool ``[B]``) is ``None`` unless the batch says which images' masks are annotations (the
    others' masks are placeholders: recipes leave them out of mask-supervised terms).

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
    _labels_host: _HostCopy | None = field(default=None, repr=False, compare=False)
    _domain_host: _HostCopy | None = field(default=None, repr=False, compare=False)
    annotated: Tensor | None = None
    #: How many images are flagged ``annotated``, counted on the host when the flags arrive there.
    annotated_count: int | None = None
    #: The class a spurious feature of each image stands for (-1: none), ``[B]``; None without.
    shortcut: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        """The batch on ``device`` (host copies follow the labels and domains if unchanged)."""
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else upload(t, device, pinned_async=True)
        labels_host, domain_host = self._host(self._labels_host, self.y), self.domain_on_host()
        known = self.label_range if labels_host is not None else None
        y, domain = mv(self.y), mv(self.domain)  # (a DataLoader's pinned batch: copied without waiting)
        return Batch(mv(self.x), y, domain, mv(self.mask), known,
                     _HostCopy.of(labels_host, y), _HostCopy.of(domain_host, domain), mv(self.annotated),
                     self.annotated_count, mv(self.shortcut))

    def known_label_range(self) -> tuple[int, int] | None:
        """``label_range`` if ``y`` is still the tensor it was read from, unchanged; else None."""
        return self.label_range if self._host(self._labels_host, self.y) is not None else None

    def labels_on_host(self) -> Tensor | None:
        """The labels as a CPU tensor when they arrived on the CPU and are unchanged; else None."""
        return self._host(self._labels_host, self.y)

    def domain_on_host(self) -> Tensor | None:
        """The domains as a CPU tensor when they arrived on the CPU and are unchanged; else None."""
        return self._host(self._domain_host, self.domain)

    @staticmethod
    def _host(copy: _HostCopy | None, t: Tensor | None) -> Tensor | None:
        return copy.host if copy is not None and copy.stands_for(t) else None


def as_batch(batch: Any, fn: str = "egl.recipes.as_batch") -> Batch:
    """Parse any supported batch layout into a :class:`Batch` (already-parsed batches pass through)."""
    if isinstance(batch, Batch):
        return batch
    if isinstance(batch, dict):
        missing = [k for k in ("image", "label") if k not in batch]
        if missing:
            raise fail(fn, "batch", "a dict with keys 'image' and 'label' (optionally 'domain', 'mask', 'annotated', "
                       "'shortcut')",
                       f"a dict with keys {sorted(batch)}", f"Add {missing} to the batch")
        x, y, d, m = batch["image"], batch["label"], batch.get("domain"), batch.get("mask")
        a, s = batch.get("annotated"), batch.get("shortcut")
    elif isinstance(batch, (tuple, list)) and len(batch) in (2, 3):
        x, y = batch[0], batch[1]
        d = batch[2] if len(batch) == 3 else None
        m = a = s = None
    else:
        raise fail(fn, "batch", "(x, y), (x, y, domain) or a dict with 'image' and 'label'", describe(batch),
                   "Return one of these layouts from the dataset")
    count: int | None = None
    x = check_shape(x, "B C H W", fn, "batch image")
    if x.shape[0] == 0:
        raise fail(fn, "batch image", "at least one image", describe(x),
                   "Skip empty batches in the loader (a filtering collate_fn or sampler can yield them)")
    if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point():
        raise fail(fn, "batch label", f"an integer tensor of shape [{x.shape[0]}]", describe(y),
                   "Give one integer class label per image")
    if d is not None and (not isinstance(d, Tensor) or d.shape != y.shape or d.is_floating_point()):
        looks_like_masks = isinstance(d, Tensor) and d.dim() >= 3 and d.shape[0] == x.shape[0]
        raise fail(fn, "batch domain", f"an integer tensor of shape [{x.shape[0]}]", describe(d),
                   "Give one integer domain index per image" + (
                       "; masks travel in dict batches only: {'image': x, 'label': y, 'mask': m}"
                       if looks_like_masks else ""))
    if s is not None and (not isinstance(s, Tensor) or s.shape != y.shape or s.is_floating_point()
                          or s.is_complex() or s.dtype == torch.bool):
        raise fail(fn, "batch shortcut", f"an integer tensor of shape [{x.shape[0]}] (a class index, -1 for none)",
                   describe(s), "Give one integer per image: the class its spurious feature stands for, or -1")
    if a is not None:
        if m is None:
            raise fail(fn, "batch annotated", "a batch with a 'mask' (it says which masks are annotations)",
                       f"'annotated' {describe(a)} without a 'mask'", "Drop 'annotated', or add the masks")
        if not isinstance(a, Tensor) or a.shape != y.shape or a.is_floating_point() or a.is_complex():
            raise fail(fn, "batch annotated", f"a bool (or 0/1 integer) tensor of shape [{x.shape[0]}]", describe(a),
                       "Give one flag per image: True where its mask is an annotation")
        if a.device.type == "cpu" and a.dtype != torch.bool and a.numel() and not 0 <= a.min() <= a.max() <= 1:
            raise fail(fn, "batch annotated", "flags 0 or 1", f"values in [{int(a.min())}, {int(a.max())}]",
                       "Give 1 (or True) where the image's mask is an annotation, 0 elsewhere")
        a = a.bool()
        count = int(a.sum()) if a.device.type == "cpu" else None
    y = y.long()
    labels_host = _HostCopy.of(y, y) if y.device.type == "cpu" and y.numel() else None
    label_range = (int(y.min()), int(y.max())) if labels_host is not None else None
    d = None if d is None else d.long()
    return Batch(x, y, d, m, label_range, labels_host,
                 _HostCopy.of(d, d) if d is not None and d.device.type == "cpu" else None, a, count,
                 None if s is None else s.long())
