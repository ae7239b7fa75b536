"""The one reduction helper of the package."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from egl._check import check_choice, describe, fail

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
    """``loss(*args)`` averaged over the samples flagged in ``annotated`` (bool ``[B]``) only; 0 (with
    a graph) for a batch of none. ``loss`` is called with its ``reduction`` set to ``"none"`` for the
    call (an :class:`~egl.losses.AlignmentLoss`); no host read."""
    if getattr(loss, "reduction", None) not in REDUCTIONS:
        raise fail(fn, "alignment", "a loss with a 'reduction' attribute (an egl.losses.AlignmentLoss): partially "
                   "annotated batches need its per-sample values", describe(loss),
                   "Subclass egl.losses.AlignmentLoss, or train on fully annotated data")
    saved = loss.reduction
    loss.reduction = "none"
    try:
        per = loss(*args)
    finally:
        loss.reduction = saved
    if not isinstance(per, Tensor) or per.shape != annotated.shape:
        raise fail(fn, "alignment", f"per-sample losses of shape {list(annotated.shape)} with reduction='none'",
                   describe(per), "Return one loss per sample when the loss's reduction is 'none'")
    w = annotated.to(per.dtype)
    return (per * w).sum() / w.sum().clamp(min=1.0)
