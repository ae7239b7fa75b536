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


def test_worst_group_accuracy_is_the_lowest_group_accuracy() -> None:
    from egl.metrics import worst_group_accuracy

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(200, 4, generator=g), torch.randint(0, 4, (200,), generator=g)
    groups = torch.randint(-3, 7, (200,), generator=g) * 11  # any integer ids, negative too
    right = logits.argmax(1) == y
    expected = min(float(right[groups == k].float().mean()) for k in groups.unique())
    assert float(worst_group_accuracy(logits, y, groups)) == pytest.approx(expected)
    assert float(worst_group_accuracy(logits, y, torch.zeros(200, dtype=torch.long))) == pytest.approx(
        float(right.float().mean()))  # one group: plain accuracy
    sizes = {int(k): int((groups == k).sum()) for k in groups.unique()}
    floor = sorted(sizes.values())[len(sizes) // 2]  # leave out the smaller half of the groups
    expected = min(float(right[groups == k].float().mean()) for k, n in sizes.items() if n >= floor)
    assert float(worst_group_accuracy(logits, y, groups, min_group_size=floor)) == pytest.approx(expected)
    assert math.isnan(float(worst_group_accuracy(logits, y, groups, min_group_size=201)))  # no group that large
    with pytest.warns(DeprecationWarning, match="'min_size' is now 'min_group_size'"):
        assert float(worst_group_accuracy(logits, y, groups, min_size=floor)) == pytest.approx(expected)


def test_evaluate_reports_worst_group_on_class_background_groups() -> None:
    from _helpers import make_model

    from egl.data import SyntheticConfig, SyntheticShortcuts
    from egl.experiments import evaluate, predict

    ds = SyntheticShortcuts("test_id", SyntheticConfig(train_per_domain=4, val_per_domain=2, test_per_split=60),
                            cache=False)
    model = make_model("test_resnet")
    out = evaluate(model, ds, explain_samples=0, min_group_size=3)
    pred, y, bg = predict(model, ds).argmax(1), ds.tensors["label"], ds.tensors["shortcut"]
    accs = [float((pred[m] == y[m]).float().mean()) for c in range(5) for b in range(-1, 5)
            if int((m := (y == c) & (bg == b)).sum()) >= 3]
    assert out["worst_group"] == pytest.approx(min(accs)) and out["worst_group"] <= out["acc"]


@pytest.mark.parametrize("groups, kwargs, match", [
    (torch.zeros(4), {}, "'groups' expected a 1-D integer tensor of group ids"),
    (torch.zeros(3, dtype=torch.long), {}, "groups"),
    ([0, 1, 2, 3], {}, "'groups' expected a torch.Tensor"),
    (torch.zeros(4, dtype=torch.long), {"min_group_size": 0}, "'min_group_size' expected an int >= 1"),
])
def test_worst_group_accuracy_names_bad_arguments(groups: object, kwargs: dict, match: str) -> None:
    from egl.metrics import worst_group_accuracy

    with pytest.raises(egl.InputError, match=match):
        worst_group_accuracy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), groups, **kwargs)
