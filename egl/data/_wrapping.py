"""Checks shared by the data-set wrappers that draw with a seed (PartialMasks, NoisyMasks,
PermutedLabels)."""

from __future__ import annotations

import numbers
from typing import Any

from egl._check import describe, fail

__all__ = ["check_data_seed", "map_style_length"]


def check_data_seed(seed: object, fn: str, arg: str = "seed") -> int:
    """An int in ``[0, 2**63)`` (what ``torch.Generator.manual_seed`` takes; a bool is refused)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise fail(fn, arg, "an int in [0, 2**63)", repr(seed)[:100], f"Pass e.g. {arg}=0")
    return int(seed)


def map_style_length(dataset: Any, fn: str, why: str = "") -> int:
    """``len(dataset)``, or an error naming ``fn``'s ``dataset`` for one without a length."""
    try:
        return len(dataset)
    except TypeError:
        raise fail(fn, "dataset", "a map-style data set (with len())", describe(dataset),
                   "Wrap a data set that has a length" + (f" ({why})" if why else "")) from None
