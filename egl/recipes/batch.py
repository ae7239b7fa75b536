"""One batch format for every recipe: ``(x, y)``, ``(x, y, domain)`` or a dict with keys
``image``, ``label`` and optionally ``domain``, ``mask``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from egl._check import check_shape, describe, fail

__all__ = ["Batch", "as_batch"]


@dataclass
class Batch:
    """A parsed batch. ``domain`` and ``mask`` are ``None`` when the data has none.

    ``label_range`` is ``(min, max)`` of ``y`` when it was read on the host (labels that arrive
    on the CPU, as a DataLoader gives them): recipes then check labels against the model's
    classes without reading them back from the device.
    """

    x: Tensor
    y: Tensor
    domain: Tensor | None = None
    mask: Tensor | None = None
    label_range: tuple[int, int] | None = None

    def to(self, device: torch.device | str) -> "Batch":
        """The batch on ``device``."""
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)
        return Batch(self.x.to(device, non_blocking=True), self.y.to(device, non_blocking=True),
                     mv(self.domain), mv(self.mask), self.label_range)


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
    label_range = (int(y.min()), int(y.max())) if y.device.type == "cpu" and y.numel() else None
    return Batch(x, y, None if d is None else d.long(), m, label_range)
