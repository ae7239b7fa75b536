"""Shortcut rate: how often a classifier predicts the class a spurious feature stands for.

Datasets built to test "right for the right reasons" (Ross et al., IJCAI 2017; Waterbirds,
Sagawa et al., ICLR 2020; decoy MNIST) pair every image with a shortcut label: the class
its spurious feature, typically the background, is correlated with in training. On test
images where that label differs from the true one, a model that decides by the shortcut
predicts the shortcut label.

Why localisation scores alone are not evidence of right reasons: a saliency map shows
where an explainer's gradient flows, not what the decision rests on. A model can point at
the object (high pointing game and energy, since explanation-guided training optimises
exactly those) and still decide by the background: Grad-CAM of a late layer whose
receptive field covers the whole image, or a map trained to look right, can sit on the
object while the logit is driven by background context. So reports show accuracy and the
shortcut rate on conflicting samples beside every localisation score: a method is right for
the right reasons when localisation rises *and* accuracy on conflicting samples rises while
the shortcut rate falls.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from egl._check import check_int, check_same_batch, check_tensor, describe, fail
from egl._transfer import upload
from egl.metrics._common import check_labels, check_logits

__all__ = ["shortcut_rate", "worst_group_accuracy"]


def shortcut_rate(logits: Tensor, shortcut_labels: Tensor, y: Tensor | None = None) -> Tensor:
    """Fraction of samples predicted as the class their spurious feature stands for.

    Args:
        logits: class scores (only the argmax matters; ties go to the lowest index).
        shortcut_labels: per sample, the class the spurious feature (background) is
            associated with.
        y: true labels. When given, only conflicting samples (``shortcut_labels != y``)
            count: elsewhere predicting the shortcut class is also predicting the truth and
            says nothing. Without ``y`` every sample counts.

    Returns:
        A 0-D float tensor in [0, 1]; NaN when no sample counts (``y`` given and no sample
        conflicts).

    Raises:
        InputError: bad shapes, batch mismatch, labels not integer or out of range.

    Shape:
        logits: ``B C``; shortcut_labels: ``B``; y: ``B``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
        >>> bg = torch.tensor([1, 1, 0])
        >>> float(shortcut_rate(logits, bg, y=torch.tensor([0, 0, 0])))
        0.5
    """
    fn = "egl.metrics.shortcut_rate"
    s = check_logits(logits, fn)
    c = s.shape[1]
    sl = check_labels(shortcut_labels, s, c, fn, "shortcut_labels")
    hit = (s.argmax(dim=1) == sl).float()
    if y is not None:
        t = check_labels(y, s, c, fn, "y")
        conflict = sl != t
        if not bool(conflict.any()):
            return torch.full((), float("nan"), device=s.device)
        hit = hit[conflict]
    return hit.mean()


def worst_group_accuracy(logits: Tensor, y: Tensor, groups: Tensor, *, min_group_size: int = 1,
                         min_size: int | None = None) -> Tensor:
    """The lowest accuracy over the groups present (Sagawa et al., ICLR 2020, "worst-group
    accuracy"): with groups = (class, spurious feature) pairs, a model that leans on the
    feature fails the groups where the two disagree, whatever its average accuracy.

    Args:
        logits: class scores (the argmax is the prediction; ties go to the lowest index).
        y: true labels.
        groups: one integer id per sample; every id present is a group (e.g.
            ``y * num_backgrounds + background``).
        min_group_size: groups with fewer samples are left out (default 1: every group counts).
            A group of one or two images reads 0 or 1 by chance: test sets with rare groups want
            a floor (the experiments use 10, ``eval.min_group_size``; ``Validation`` and
            ``evaluate`` take the same name).
        min_size: the former name of ``min_group_size`` (deprecated: warns).

    Returns:
        A 0-D float tensor in [0, 1]; NaN when no group has ``min_group_size`` samples.

    Raises:
        InputError: bad shapes, batch mismatch, labels not integer or out of range, ``groups``
            not a 1-D integer tensor of the batch's length.

    Shape:
        logits: ``B C``; y: ``B``; groups: ``B``.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
        >>> y, g = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 0, 1, 2])
        >>> float(worst_group_accuracy(logits, y, g))   # groups 0 and 1 right, group 2 wrong
        0.0
    """
    fn = "egl.metrics.worst_group_accuracy"
    s = check_logits(logits, fn)
    t = check_labels(y, s, s.shape[1], fn, "y")
    g = check_tensor(groups, fn, "groups")
    if g.dim() != 1 or g.is_floating_point() or g.is_complex() or g.dtype == torch.bool:
        raise fail(fn, "groups", "a 1-D integer tensor of group ids [B]", describe(g),
                   "Pass one integer group id per sample, e.g. y * num_backgrounds + background")
    check_same_batch(fn, logits=s, groups=g)
    if min_size is not None:
        if min_group_size != 1 and min_group_size != min_size:
            raise fail(fn, "min_size", "to be left out beside min_group_size (its new name)",
                       f"min_size={min_size!r} and min_group_size={min_group_size!r}", "Pass min_group_size only")
        warnings.warn(f"{fn}: 'min_size' is now 'min_group_size' (as in Validation and evaluate); pass "
                      f"min_group_size={min_size!r}", DeprecationWarning, stacklevel=2)
        min_group_size = min_size
    check_int(min_group_size, fn, "min_group_size", low=1, fix="Pass e.g. min_group_size=10")
    correct = (s.argmax(dim=1) == t).to(torch.float64)
    ids, index = torch.unique(upload(g, s.device), return_inverse=True)
    hits = torch.zeros(ids.numel(), dtype=torch.float64, device=s.device).index_add_(0, index, correct)
    counts = torch.bincount(index, minlength=ids.numel()).to(torch.float64)
    acc = torch.where(counts >= min_group_size, hits / counts, torch.full_like(counts, float("inf")))
    worst = acc.min()
    return torch.where(torch.isinf(worst), torch.full_like(worst, float("nan")), worst).to(torch.float32)
