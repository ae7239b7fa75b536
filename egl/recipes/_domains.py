"""Domain and group handling shared by the recipes that need domain labels (IRM, Mixup, VREx,
CORAL, MMD) or group a batch by its labels (VREx)."""

from __future__ import annotations

import torch
from torch import Tensor

from egl._check import fail
from egl._transfer import upload
from egl.recipes.batch import Batch

__all__ = ["require_domains", "domain_groups", "batch_groups", "group_keys", "split_keys", "global_groups"]


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
    return split_keys(group_keys(batch, by, fn, method), batch.y.device)


def group_keys(batch: Batch, by: str, fn: str, method: str) -> Tensor:
    """The labels whose distinct rows are :func:`batch_groups`'s groups (arguments as there):
    on the host when every column has a host copy, else on the batch's device.

    Shape:
        returns ``B C``, ``C`` = 1 (``"domain"``, ``"class"``) or 2 (the pairs).
    """
    if by == "shortcut" and batch.shortcut is None:
        raise fail(fn, "batch", "dict batches with key 'shortcut' (groups='shortcut')",
                   "a batch without shortcut labels", "Use data whose items carry 'shortcut' (the synthetic "
                   "benchmark, egl.data.ImageCSV with a shortcut column), or groups='domain'")
    if by in ("domain", "domain_class"):
        require_domains(batch, fn, f"{method} with groups='{by}'")
    cols = {"domain": [(batch.domain, batch.domain_on_host())],
            "class": [(batch.y, batch.labels_on_host())],
            "domain_class": [(batch.domain, batch.domain_on_host()), (batch.y, batch.labels_on_host())],
            "shortcut": [(batch.y, batch.labels_on_host()), (batch.shortcut, None)]}[by]
    on_host = all(h is not None for _, h in cols)
    return torch.stack([h if on_host else t for t, h in cols], 1)  # type: ignore[misc]


def split_keys(keys: Tensor, device: torch.device) -> list[Tensor]:
    """One index tensor per distinct row of ``keys`` (``B C``), rows sorted, on ``device``."""
    if keys.shape[1] == 1:
        return _split(keys[:, 0], device)
    _, labels = torch.unique(keys, dim=0, return_inverse=True)
    return _split(labels, device)


def global_groups(keys: Tensor, *rows: Tensor, fn: str) -> tuple[list[Tensor], tuple[Tensor, ...]]:
    """The global batch's groups and rows: under ``torch.distributed`` every rank's ``keys`` and
    ``rows`` are gathered (:func:`egl.train.global_batch.gather_rows`, differentiable), so that
    each rank computes the global batch's loss; outside, this rank's as given.

    Args:
        keys: :func:`group_keys` (or domain labels as ``B 1``), on the host or the rows' device.
        rows: per-sample tensors (risks, logits, features) on one device.
        fn: the recipe, named when another rank failed its checks.

    Returns:
        the groups' index tensors (on the rows' device) and the rows, in rank order.
    """
    from egl.train.distributed import is_distributed  # lazy: egl.train imports the recipes

    device = rows[0].device
    if is_distributed():
        from egl.train.global_batch import gather_rows

        keys, *gathered = gather_rows(upload(keys, device), *rows, fn=fn)
        rows = tuple(gathered)
        keys = keys.cpu()  # (a second host read, after the sizes': it waits for the gathers queued before it)
    return split_keys(keys, device), rows
