"""Classification metrics: top-1 accuracy and macro one-vs-rest ROC AUC, computed in torch.

The AUC is the Mann-Whitney form of the area under the ROC curve (Hanley & McNeil,
Radiology 1982): for class ``c``, ``(R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where
``R_pos`` sums the ranks (ties averaged) of the positive samples' scores. It equals
``sklearn.metrics.roc_auc_score(y, probs, multi_class="ovr", average="macro")``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egl._check import describe, fail
from egl.metrics._common import check_labels, check_logits

__all__ = ["accuracy", "auc"]


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of samples whose top-1 prediction equals the label.

    Ties between classes go to the lowest class index (``argmax``).

    Args:
        logits: class scores (logits or probabilities: only the argmax matters).
        y: class indices.

    Returns:
        A 0-D float tensor in [0, 1] on ``logits``' device.

    Raises:
        InputError: wrong shapes, batch mismatch, non-integer labels or labels out of range.

    Shape:
        logits: ``B C``; y: ``B``.

    Example:
        >>> import torch
        >>> float(accuracy(torch.tensor([[2.0, 1.0], [0.0, 3.0]]), torch.tensor([0, 0])))
        0.5
    """
    fn = "egl.metrics.accuracy"
    s = check_logits(logits, fn)
    t = check_labels(y, s, s.shape[1], fn, "y")
    return (s.argmax(dim=1) == t).float().mean()


def _as_probabilities(s: Tensor, given: torch.dtype) -> Tensor:
    """Rows already on the simplex pass through; anything else goes through softmax.

    The rows' sums are compared with 1 within ``max(1e-4, C · eps(given))``: probabilities
    rounded to a 16-bit ``given`` dtype miss 1e-4 by rounding alone (and a second softmax
    would change their one-vs-rest ranking)."""
    atol = max(1e-4, s.shape[1] * torch.finfo(given).eps) if given.is_floating_point else 1e-4
    on_simplex = (
        float(s.min()) >= 0.0 and float(s.max()) <= 1.0
        and bool(torch.allclose(s.sum(dim=1), torch.ones_like(s[:, 0]), atol=atol, rtol=0.0))
    )
    return s if on_simplex else torch.softmax(s, dim=1)


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks along dim 1 with ties averaged (SciPy's ``rankdata(method="average")``)."""
    sorted_vals = torch.sort(values, dim=1).values
    below = torch.searchsorted(sorted_vals, values, right=False)  # number of values < v
    at_or_below = torch.searchsorted(sorted_vals, values, right=True)  # number <= v
    return (below + at_or_below + 1).to(values.dtype) / 2.0


def auc(logits_or_probs: Tensor, y: Tensor, num_classes: int | None = None) -> Tensor:
    """Macro one-vs-rest ROC AUC, tie-aware, computed in float64 torch.

    Scores: if every row is already a probability vector (values in [0, 1] summing to 1
    within 1e-4, or ``C`` times the dtype's epsilon for 16-bit scores) it is used as is,
    otherwise a softmax is applied first. The choice
    matters: one-vs-rest ranks of a class's logit and of its softmax probability differ.

    Classes absent from ``y`` have no positives and are skipped (left out of the macro
    average). With fewer than two classes present the AUC is undefined and an
    :class:`~egl.InputError` is raised, as scikit-learn does: compute AUC over a whole
    evaluation set, not a small batch.

    Args:
        logits_or_probs: class scores.
        y: class indices.
        num_classes: if given, must equal ``C`` (a guard against a wrong head).

    Returns:
        A 0-D float64 tensor in [0, 1]: the mean of the per-class AUCs of present classes.

    Raises:
        InputError: bad shapes, labels out of range, ``num_classes != C``, or fewer than
            two classes present in ``y``.

    Shape:
        logits_or_probs: ``B C``; y: ``B``.

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
        >>> float(auc(p, torch.tensor([0, 1, 1])))
        1.0
    """
    fn = "egl.metrics.auc"
    s = check_logits(logits_or_probs, fn, "logits_or_probs")
    c = s.shape[1]
    if num_classes is not None and (isinstance(num_classes, bool) or num_classes != c):
        raise fail(fn, "num_classes", f"the number of score columns ({c})", describe(num_classes),
                   "Pass scores with one column per class, or leave num_classes=None")
    t = check_labels(y, s, c, fn, "y", batch_arg="logits_or_probs")
    probs = _as_probabilities(s.double(), s.dtype)
    onehot = torch.nn.functional.one_hot(t, c).bool()  # [B, C]
    n_pos = onehot.sum(dim=0).double()  # [C]
    n_neg = t.numel() - n_pos
    present = n_pos > 0
    if int(present.sum()) < 2:
        found = sorted({int(v) for v in t.unique()})
        raise fail(fn, "y", "at least two distinct classes", f"classes {found}",
                   "ROC AUC is undefined with one class: evaluate on a set holding several classes")
    ranks = _average_ranks(probs.T.contiguous())  # [C, B]
    rank_sum = (ranks * onehot.T).sum(dim=1)  # [C]
    per_class = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return per_class[present].mean()
