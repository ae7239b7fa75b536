"""Domain handling shared by the recipes that need domain labels (IRM, Mixup)."""

from __future__ import annotations

import torch
from torch import Tensor

from egl._check import fail
from egl.recipes.batch import Batch

__all__ = ["require_domains", "domain_groups"]


def require_domains(batch: Batch, fn: str, method: str) -> Tensor:
    """The batch's domain labels; an :class:`egl.InputError` naming the fix when it has none."""
    if batch.domain is None:
        raise fail(fn, "batch", "(x, y, domain) batches or a dict with key 'domain'",
                   "a batch without domain labels",
                   f"{method} needs (x, y, domain) batches or dict key 'domain': "
                   "give the loader one integer domain index per image")
    return batch.domain


def domain_groups(domain: Tensor) -> list[Tensor]:
    """Indices of each domain's samples, in batch order, domains sorted by label.

    Shape:
        domain: ``B``; returns one ``n_d`` index tensor per domain present.
    """
    return [torch.nonzero(domain == d, as_tuple=True)[0] for d in torch.unique(domain)]
