"""egl.regularizers.sparsity / Sparsity: ALIGN's mask L1 term."""

from __future__ import annotations

import pytest
import torch

import egl
from egl.regularizers import Sparsity, sparsity


def test_mean_abs_per_sample() -> None:
    m = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    assert sparsity(m, reduction="none").tolist() == [0.5, 1.0]
    assert float(sparsity(m)) == pytest.approx(0.75)
    assert float(sparsity(m, reduction="sum")) == pytest.approx(1.5)


def test_uses_absolute_value() -> None:
    m = torch.tensor([[-0.5, 0.5]])
    assert float(sparsity(m)) == pytest.approx(0.5)


def test_module_equals_function_and_registered() -> None:
    m = torch.rand(3, 1, 8, 8)
    reg = egl.create("regularizer", "sparsity", reduction="none")
    assert isinstance(reg, Sparsity) and reg.inputs == "mask"
    torch.testing.assert_close(reg(m), sparsity(m, reduction="none"))


def test_gradient() -> None:
    m = torch.rand(2, 1, 4, 4, requires_grad=True)
    sparsity(m).backward()
    assert m.grad is not None
    torch.testing.assert_close(m.grad, torch.full_like(m, 1 / 32))


def test_errors() -> None:
    with pytest.raises(egl.InputError, match=r"sparsity: 'mask' expected a floating-point tensor, got a torch.bool"):
        sparsity(torch.ones(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(egl.InputError, match=r"sparsity: 'mask' expected a torch.Tensor"):
        sparsity([0.5])  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"'reduction' expected one of \['mean', 'sum', 'none'\], got 'avg'"):
        sparsity(torch.rand(1, 1, 2, 2), reduction="avg")
    with pytest.raises(egl.InputError, match=r"Sparsity: 'reduction' expected one of"):
        Sparsity(reduction="avg")


def test_masks_without_elements_or_without_a_batch_dimension_are_named() -> None:
    """A [B, 1, 0, W] mask gave NaN (a mean over nothing), a 0-D one an IndexError inside reduce."""
    for reduction in ("mean", "sum", "none"):
        with pytest.raises(egl.InputError, match=r"sparsity: 'inputs' expected at least one element per sample"):
            sparsity(torch.rand(2, 1, 0, 4), reduction=reduction)
    with pytest.raises(egl.InputError, match=r"sparsity: 'mask' expected a tensor of shape \[B, \.\.\.\]"):
        sparsity(torch.tensor(0.5))
