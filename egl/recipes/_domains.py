"""Domain handling shared by the recipes that need domain labels (IRM, Mixup)."""

from __future__ import annotations

import torch
from torch import Tensor

from egl._check import fail
from egl._transfer import upload
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


def domain_groups(domain: Tensor, host: Tensor | None = None) -> list[Tensor]:
    """Indices of each domain's samples, in batch order, domains sorted by label.

    Args:
        domain: domain label of every sample.
        host: the same labels on the CPU (:meth:`egl.recipes.Batch.domain_on_host`): the groups
            are then found there and copied to ``domain``'s device without waiting for it
            (on a GPU, ``unique`` and ``nonzero`` on device tensors each synchronise).

    Shape:
        domain: ``B``; returns one ``n_d`` index tensor per domain present.
    """
    src = host if host is not None else domain
    groups = [torch.nonzero(src == d, as_tuple=True)[0] for d in torch.unique(src)]
    return [upload(g, domain.device) for g in groups] if src is not domain else groups
