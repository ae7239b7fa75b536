"""Domain and group handling shared by the recipes that need domain labels (IRM, Mixup, VREx,
CORAL, MMD) or group a batch by its labels (VREx)."""

from __future__ import annotations

import torch
from torch import Tensor

from egl._check import fail
from egl._transfer import upload
from egl.recipes.batch import Batch

__all__ = ["require_domains", "domain_groups", "batch_groups"]


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
    return _split(host if host is not None else domain, domain.device)


def _split(labels: Tensor, device: torch.device) -> list[Tensor]:
    """One index tensor per distinct value of ``labels``, values sorted, on ``device``."""
    groups = [torch.nonzero(labels == v, as_tuple=True)[0] for v in torch.unique(labels)]
    return [upload(g, device) for g in groups] if labels.device != device else groups


def batch_groups(batch: Batch, by: str, fn: str, method: str) -> list[Tensor]:
    """Indices of each group's samples, in batch order; groups sorted by their labels.

    Args:
        batch: the parsed batch.
        by: ``"domain"``, ``"class"``, ``"domain_class"`` ((domain, class) pairs) or
            ``"shortcut"`` ((class, shortcut) pairs; the shortcut is the class a spurious feature
            of the image stands for, -1 for none).
        fn, method: named in the error of a batch without the labels ``by`` needs.

    A group is one distinct value, or pair of values, of the labels: no range or numbering is
    assumed. Labels that arrived on the CPU are grouped there (no device synchronisation);
    shortcut labels, which keep no host copy, are grouped where they are.
    """
    if by == "shortcut" and batch.shortcut is None:
        raise fail(fn, "batch", "dict batches with key 'shortcut' (groups='shortcut')",
                   "a batch without shortcut labels", "Use data whose items carry 'shortcut' (the synthetic "
                   "benchmark, egl.data.ImageCSV with a shortcut column), or groups='domain'")
    if by in ("domain", "domain_class"):
        require_domains(batch, fn, f"{method} with groups='{by}'")
    if by == "domain":
        return domain_groups(batch.domain, batch.domain_on_host())  # type: ignore[arg-type]
    cols = {"class": [(batch.y, batch.labels_on_host())],
            "domain_class": [(batch.domain, batch.domain_on_host()), (batch.y, batch.labels_on_host())],
            "shortcut": [(batch.y, batch.labels_on_host()), (batch.shortcut, None)]}[by]
    if len(cols) == 1:
        labels = cols[0][1] if cols[0][1] is not None else cols[0][0]
    else:
        on_host = all(h is not None for _, h in cols)
        _, labels = torch.unique(torch.stack([h if on_host else t for t, h in cols], 1), dim=0, return_inverse=True)
    return _split(labels, batch.y.device)  # type: ignore[arg-type]
