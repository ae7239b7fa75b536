"""egl.losses.reduce: the one reduction helper of the package."""

from __future__ import annotations

import pytest
import torch

import egl
from egl.losses import reduce


def test_per_sample_mean_then_batch_reduction() -> None:
    loss = torch.tensor([[1.0, 3.0], [2.0, 2.0]])
    assert reduce(loss, "none", "fn").tolist() == [2.0, 2.0]
    assert float(reduce(loss, "mean", "fn")) == 2.0 and float(reduce(loss, "sum", "fn")) == 4.0


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_samples_without_elements_are_named_not_nan(reduction: str) -> None:
    """A [B, 0] loss (a map or mask with a zero-sized side) was a mean over nothing: NaN, silently."""
    with pytest.raises(egl.InputError, match=r"fn: 'inputs' expected at least one element per sample .*got samples of "
                                             r"shape \[1, 0, 4\] \(loss of shape \[2, 1, 0, 4\]\)"):
        reduce(torch.rand(2, 1, 0, 4), reduction, "fn")
    assert reduce(torch.rand(0, 1, 0, 4), "none", "fn").shape == (0,)  # an empty batch: nothing to average


def test_a_loss_without_a_batch_dimension_is_named() -> None:
    """A 0-D tensor was an IndexError inside reduce, a list an AttributeError."""
    for bad in (torch.tensor(1.0), [1.0, 2.0]):
        with pytest.raises(egl.InputError, match=r"fn: 'elementwise' expected a loss tensor of shape \[B, \.\.\.\]"):
            reduce(bad, "mean", "fn")  # type: ignore[arg-type]
