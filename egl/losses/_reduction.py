"""The one reduction helper of the package."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from egl._check import check_choice, describe, fail
from egl._transfer import upload

__all__ = ["reduce", "REDUCTIONS", "annotated_mean"]

REDUCTIONS = ("mean", "sum", "none")


def reduce(elementwise: Tensor, reduction: str, fn: str) -> Tensor:
    """Average a ``[B, ...]`` elementwise loss per sample, then reduce over the batch.

    ``"mean"`` and ``"sum"`` give a scalar; ``"none"`` gives the per-sample losses ``[B]``.

    Raises:
        InputError: an unknown ``reduction``; ``elementwise`` not a tensor with a batch dimension;
            samples of no elements (their mean would be NaN); an empty batch with ``"mean"``.
    """
    check_choice(reduction, REDUCTIONS, fn, "reduction")
    if not isinstance(elementwise, Tensor) or elementwise.dim() == 0:  # (a 0-D loss has no batch to reduce)
        raise fail(fn, "elementwise", "a loss tensor of shape [B, ...] (one row per sample)", describe(elementwise),
                   "Keep the batch dimension, e.g. loss[None] for a single sample")
    if elementwise.dim() > 1 and elementwise.shape[0] > 0 and math.prod(elementwise.shape[1:]) == 0:
        raise fail(fn, "inputs", "at least one element per sample (a mean over none is NaN)",
                   f"samples of shape {list(elementwise.shape[1:])} (loss of shape {list(elementwise.shape)})",
                   "Check the inputs' spatial size: a map or mask with a zero-sized dimension holds nothing to score")
    if reduction == "mean" and elementwise.shape[0] == 0:  # (a mean over nothing is NaN: a silent non-finite loss)
        raise fail(fn, "inputs", "a batch of at least one sample for reduction='mean'",
                   f"an empty batch (loss of shape {list(elementwise.shape)})",
                   "Skip the loss for an empty batch, or pass reduction='sum' (0) or 'none' (an empty vector)")
    per_sample = elementwise.flatten(1).mean(dim=1) if elementwise.dim() > 1 else elementwise
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def annotated_mean(loss: Any, annotated: Tensor, *args: Any, fn: str) -> Tensor:
    """``loss(*args)`` over the samples flagged in ``annotated`` (bool ``[B]``) only, reduced as the
    loss's own ``reduction`` says: ``"mean"`` averages over the flagged samples (0, with a graph, for
    a batch of none), ``"sum"`` sums them, ``"none"`` gives ``[B]`` with the others' values 0.

    The loss is called as a shallow copy whose ``reduction`` is ``"none"`` (the loss itself is not
    touched: a loss shared by two threads keeps its own). Under ``torch.distributed`` (more than one
    rank) ``"mean"`` divides by the flagged samples of *all* ranks (one ``all_reduce`` of the count)
    and multiplies by the world size, so that the ranks' averaged gradients are those of the mean
    over every flagged sample of the global batch, as one process would compute it; each rank's
    value is then its share of that mean times the world size. No host read."""
    import copy

    if getattr(loss, "reduction", None) not in REDUCTIONS:
        raise fail(fn, "alignment", "a loss with a 'reduction' attribute (an egl.losses.AlignmentLoss): partially "
                   "annotated batches need its per-sample values", describe(loss),
                   "Subclass egl.losses.AlignmentLoss, or train on fully annotated data")
    per_sample = copy.copy(loss)
    per_sample.reduction = "none"
    per = per_sample(*args)
    if not isinstance(per, Tensor) or per.shape != annotated.shape:
        raise fail(fn, "alignment", f"per-sample losses of shape {list(annotated.shape)} with reduction='none'",
                   describe(per), "Return one loss per sample when the loss's reduction is 'none'")
    flags = upload(annotated, per.device)
    kept = torch.where(flags, per, per.new_zeros(()))  # (not per * flags: an unflagged inf or NaN would leak)
    if loss.reduction == "none":
        return kept
    if loss.reduction == "sum":
        return kept.sum()
    count = flags.sum().to(dtype=per.dtype)
    from egl.train.distributed import is_distributed, world_size

    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(count)  # (a device collective: every rank's flagged samples)
        return world_size() * kept.sum() / count.clamp(min=1.0)
    return kept.sum() / count.clamp(min=1.0)
