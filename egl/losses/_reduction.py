"""The reduction helpers of the package: per-sample means reduced over a batch, and over the
annotated samples of a partially annotated batch."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from egl._check import check_choice, describe, fail
from egl._transfer import upload

__all__ = ["reduce", "REDUCTIONS", "annotated_mean", "annotated_count", "ANNOTATED_MEANS"]

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


ANNOTATED_MEANS = ("batch", "annotated")


def annotated_mean(loss: Any, annotated: Tensor, *args: Any, fn: str, over: str = "batch",
                   global_count: Tensor | None = None) -> Tensor:
    """``loss(*args)`` over the samples flagged in ``annotated`` (bool ``[B]``) only.

    With the loss's ``reduction="mean"``, ``over`` says what the flagged values are averaged over:

    * ``"batch"`` (default): their sum divided by the batch size ``B``: every flagged sample
      weighs what it weighs when every sample is flagged, and the term shrinks with the share of
      flagged samples. Under ``torch.distributed`` each rank divides by its own batch, and the
      ranks' averaged gradients are those of the global batch (for equal batches per rank).
    * ``"annotated"``: their mean: the term keeps its scale whatever the share, each flagged
      sample weighing ``B / flagged`` times more. Under ``torch.distributed`` the mean is over
      the flagged samples of every rank (one ``all_reduce`` of the count; each rank's value is
      its share times the world size). A caller that computed that count already (before any
      check that could fail on one rank only, so that no rank is left alone in the collective)
      passes it as ``global_count``.

    Either gives 0, with a graph, for a batch of none. ``"sum"`` sums the flagged values,
    ``"none"`` gives ``[B]`` with the others' values 0. The loss is called as a shallow copy
    whose ``reduction`` is ``"none"`` (the loss itself is not touched: a loss shared by two
    threads keeps its own). No host read."""
    import copy

    check_choice(over, ANNOTATED_MEANS, fn, "over")
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
    if over == "batch":
        return kept.sum() / max(kept.shape[0], 1)
    count = flags.sum().to(dtype=per.dtype)
    from egl.train.distributed import is_distributed, world_size

    if is_distributed():
        if global_count is None:
            global_count = annotated_count(flags, per.dtype)
        return world_size() * kept.sum() / global_count.to(dtype=per.dtype).clamp(min=1.0)
    return kept.sum() / count.clamp(min=1.0)


def annotated_count(annotated: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The number of flagged samples over every rank (one ``all_reduce``; this rank's alone when
    not distributed), as a 0-D tensor of ``dtype`` on ``annotated``'s device."""
    from egl.train.distributed import is_distributed

    count = annotated.sum().to(dtype=dtype)
    if is_distributed():
        import torch.distributed as dist

        dist.all_reduce(count)  # (a device collective: every rank's flagged samples)
    return count
