"""The one reduction helper of the package."""

from __future__ import annotations

import math

from torch import Tensor

from egl._check import check_choice, describe, fail

__all__ = ["reduce", "REDUCTIONS"]

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
