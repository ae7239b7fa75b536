"""egl.metrics.accuracy / auc: top-1 accuracy and macro one-vs-rest ROC AUC."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

import egl
from egl.metrics import accuracy, auc


def _data(b: int = 60, c: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (b,), generator=g)
    logits = torch.randn(b, c, generator=g) + 1.5 * torch.nn.functional.one_hot(y, c)
    return logits, y


# -- accuracy -------------------------------------------------------------------------------
def test_accuracy_counts_top1() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 5.0, 0.0], [0.0, 1.0, 0.0]])
    acc = accuracy(logits, torch.tensor([0, 2, 0, 1]))
    assert acc.dim() == 0
    assert float(acc) == 0.75


def test_accuracy_ties_go_to_lowest_index() -> None:
    assert float(accuracy(torch.zeros(2, 3), torch.tensor([0, 1]))) == 0.5


def test_accuracy_matches_argmax_on_random_data() -> None:
    logits, y = _data()
    assert float(accuracy(logits, y)) == pytest.approx(float((logits.argmax(1) == y).float().mean()))


# -- auc ------------------------------------------------------------------------------------
def test_auc_matches_sklearn_on_probabilities() -> None:
    logits, y = _data()
    probs = logits.softmax(1)
    ref = roc_auc_score(y.numpy(), probs.numpy(), multi_class="ovr", average="macro")
    out = auc(probs, y)
    assert out.dim() == 0
    assert float(out) == pytest.approx(ref, abs=1e-12)



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_auc_takes_16_bit_probabilities_as_they_are(dtype: torch.dtype) -> None:
    """Rounded to 16 bits, rows sum to 1 only within ~3e-4 (float16) or ~3e-3 (bfloat16): they
    missed the 1e-4 test, took a second softmax and ranked otherwise (0.5996 for 0.6069)."""
    logits, y = _data(200, 4)
    probs = logits.softmax(1).to(dtype)
    assert float((probs.double().sum(1) - 1).abs().max()) > 1e-4
    per_class = [roc_auc_score((y == c).numpy(), probs[:, c].double().numpy()) for c in range(4)]
    assert float(auc(probs, y)) == pytest.approx(sum(per_class) / 4, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
def test_any_integer_label_dtype(dtype: torch.dtype) -> None:
    """one_hot takes int64 only: int32 labels crashed inside torch."""
    logits, y = _data()
    assert float(auc(logits, y.to(dtype))) == float(auc(logits, y))
    assert float(accuracy(logits, y.to(dtype))) == float(accuracy(logits, y))

def test_auc_applies_softmax_to_logits() -> None:
    logits, y = _data(seed=1)
    ref = roc_auc_score(y.numpy(), logits.softmax(1).double().numpy(), multi_class="ovr", average="macro")
    assert float(auc(logits, y)) == pytest.approx(ref, abs=1e-12)
    assert float(auc(logits, y)) == pytest.approx(float(auc(logits.softmax(1), y)), abs=1e-12)


def test_auc_averages_tied_ranks_like_sklearn() -> None:
    # Rows drawn from five probability vectors: every column is full of ties.
    g = torch.Generator().manual_seed(2)
    palette = torch.tensor([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0], [0.25, 0.25, 0.5]],
                           dtype=torch.float64)
    y = torch.randint(0, 3, (80,), generator=g)
    pick = torch.where(torch.rand(80, generator=g) < 0.6, y, torch.randint(0, 5, (80,), generator=g))
    probs = palette[pick]
    ref = roc_auc_score(y.numpy(), probs.numpy(), multi_class="ovr", average="macro")
    assert float(auc(probs, y)) == pytest.approx(ref, abs=1e-12)
    # Ties on the simplex as given: two-class rows of {0, .5, 1}.
    p1 = torch.tensor([0.0, 0.5, 0.5, 1.0, 0.5, 0.0, 1.0, 0.5])
    yb = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    probs2 = torch.stack([1 - p1, p1], dim=1)
    assert float(auc(probs2, yb)) == pytest.approx(roc_auc_score(yb.numpy(), p1.numpy()), abs=1e-12)


def test_auc_binary_equals_sklearn_binary() -> None:
    logits, y = _data(b=40, c=2, seed=3)
    p = logits.softmax(1)
    assert float(auc(p, y)) == pytest.approx(roc_auc_score(y.numpy(), p[:, 1].numpy()), abs=1e-12)


def test_auc_skips_classes_absent_from_labels() -> None:
    logits, y = _data(b=60, c=4, seed=4)
    y = y.clamp(max=2)  # class 3 never occurs
    p = logits.softmax(1).double()
    per_class = [roc_auc_score((y == c).numpy(), p[:, c].numpy()) for c in range(3)]
    assert float(auc(p, y, num_classes=4)) == pytest.approx(sum(per_class) / 3, abs=1e-12)


def test_auc_perfect_and_reversed() -> None:
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    perfect = torch.nn.functional.one_hot(y, 3).float() * 0.7 + 0.1  # rows (0.8, 0.1, 0.1)
    assert float(auc(perfect, y)) == 1.0
    p1 = torch.tensor([0.9, 0.8, 0.2, 0.1])
    assert float(auc(torch.stack([1 - p1, p1], 1), torch.tensor([0, 0, 1, 1]))) == 0.0


def test_auc_single_class_raises() -> None:
    logits, _ = _data(b=10)
    with pytest.raises(egl.InputError, match=r"egl.metrics.auc: 'y' expected at least two distinct classes, got classes \[2\]"):
        auc(logits, torch.full((10,), 2))


# -- errors ---------------------------------------------------------------------------------
def test_labels_must_be_integer_indices() -> None:
    logits, y = _data(b=4)
    with pytest.raises(egl.InputError, match=r"egl.metrics.accuracy: 'y' expected a 1-D integer tensor"):
        accuracy(logits, y.float())
    with pytest.raises(egl.InputError, match=r"'y' expected a 1-D integer tensor"):
        auc(logits, torch.nn.functional.one_hot(y, 4))


def test_labels_out_of_range() -> None:
    logits, _ = _data(b=4)
    with pytest.raises(egl.InputError, match=r"'y' expected class indices in \[0, 3\], got values in \[0, 7\]"):
        accuracy(logits, torch.tensor([0, 1, 7, 2]))


def test_batch_mismatch() -> None:
    logits, _ = _data(b=4)
    with pytest.raises(egl.InputError, match=r"'y' expected the same batch size as 'logits' \(4\)"):
        accuracy(logits, torch.tensor([0, 1]))
    with pytest.raises(egl.InputError, match=r"'y' expected the same batch size as 'logits_or_probs' \(4\)"):
        auc(logits, torch.tensor([0, 1]))


def test_logits_shape_and_values() -> None:
    with pytest.raises(egl.InputError, match=r"'logits' expected a 2-D tensor of shape \[B, C\]"):
        accuracy(torch.randn(4), torch.tensor([0, 1, 0, 1]))
    bad = torch.randn(4, 3)
    bad[1, 1] = math.nan
    with pytest.raises(egl.InputError, match=r"'logits_or_probs' expected finite values"):
        auc(bad, torch.tensor([0, 1, 2, 1]))


def test_num_classes_mismatch() -> None:
    logits, y = _data(b=8)
    with pytest.raises(egl.InputError, match=r"'num_classes' expected the number of score columns \(4\), got int 5"):
        auc(logits, y, num_classes=5)
