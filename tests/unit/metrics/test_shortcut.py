"""egl.metrics.shortcut_rate: how often predictions follow the spurious feature."""

from __future__ import annotations

import math

import pytest
import torch

import egl
from egl.metrics import accuracy, shortcut_rate

# Predictions: 0, 1, 1, 2
LOGITS = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 1.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0]])


def test_rate_over_all_samples() -> None:
    out = shortcut_rate(LOGITS, torch.tensor([0, 0, 1, 1]))
    assert out.dim() == 0
    assert float(out) == 0.5


def test_only_conflicting_samples_count_when_y_given() -> None:
    y = torch.tensor([0, 0, 0, 2])
    bg = torch.tensor([0, 1, 1, 1])  # sample 0 agrees with its label: left out
    assert float(shortcut_rate(LOGITS, bg, y)) == pytest.approx(2 / 3)
    # Report beside accuracy on the same conflicting samples: here 1 of 3 is right.
    conflict = bg != y
    assert float(accuracy(LOGITS[conflict], y[conflict])) == pytest.approx(1 / 3)


def test_nan_without_conflicting_samples() -> None:
    y = torch.tensor([0, 1, 1, 2])
    assert math.isnan(float(shortcut_rate(LOGITS, y, y)))


def test_errors() -> None:
    with pytest.raises(egl.InputError, match=r"egl.metrics.shortcut_rate: 'shortcut_labels' expected class indices in \[0, 2\], got values in \[0, 3\]"):
        shortcut_rate(LOGITS, torch.tensor([0, 3, 1, 1]))
    with pytest.raises(egl.InputError, match=r"'shortcut_labels' expected the same batch size as 'logits' \(4\), got batch size 2"):
        shortcut_rate(LOGITS, torch.tensor([0, 1]))
    with pytest.raises(egl.InputError, match=r"'y' expected a 1-D integer tensor"):
        shortcut_rate(LOGITS, torch.tensor([0, 1, 1, 1]), torch.zeros(4))
    with pytest.raises(egl.InputError, match=r"'logits' expected a 2-D tensor"):
        shortcut_rate(torch.zeros(4), torch.tensor([0, 1, 1, 1]))
