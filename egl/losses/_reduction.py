"""The one reduction helper of the package."""

from __future__ import annotations

from torch import Tensor

from egl._check import check_choice, fail

__all__ = ["reduce", "REDUCTIONS"]

REDUCTIONS = ("mean", "sum", "none")


def reduce(elementwise: Tensor, reduction: str, fn: str) -> Tensor:
    """Average a ``[B, ...]`` elementwise loss per sample, then reduce over the batch.

    ``"mean"`` and ``"sum"`` give a scalar; ``"none"`` gives the per-sample losses ``[B]``.
    """
    check_choice(reduction, REDUCTIONS, fn, "reduction")
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
