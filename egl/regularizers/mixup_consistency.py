"""Mixup explanation consistency, ALIGN's ``L_reg`` (Hong et al., AAAI 2026, Eqs. 18-19),
after DRE (Li et al., CVPR 2023):

``L_reg = |β Φ(x_i) + (1 − β) Φ(x_j) − Φ(x̃)|_1 + CE(f(x̃), y) + |Φ(x̃)|_1``,
``x̃ = β x_i + (1 − β) x_j`` for same-class pairs, ``β ~ Beta(α, α)``.

Choices where the paper is silent (all configurable):

* ``α = 0.2`` (DRE's value; ALIGN does not state it). One β per pair.
* Pairing: samples are shuffled within their class and each is mixed with the next one
  in its class (a random cyclic shift), so no sample pairs with itself when its class
  has two or more members. A sample whose class is alone in the batch pairs with
  itself: ``x̃ = x``, its consistency term is exactly 0, its CE and sparsity terms count.
* ``|·|_1`` terms are means over map elements (not sums), so weights do not depend on
  the map's resolution. The terms' weights default to 1, 1, 1 as in Eq. 18.
* ``Φ(x_i)``, ``Φ(x_j)`` are the explanations of the unmixed batch; pass them as
  ``saliency=`` to reuse the main pass's explanation instead of recomputing it.
* The mixed target ``β Φ(x_i) + (1 − β) Φ(x_j)`` is not detached (``detach_target=False``):
  the consistency term trains the maps of the unmixed images too, as DRE's does (Li et al.'s
  code); ``detach_target=True`` makes it a fixed target that only ``Φ(x̃)`` moves towards.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from egl._check import check_flag, check_positive, check_same_batch, check_shape, describe, fail
from egl._sampling import sample_beta
from egl._transfer import upload
from egl.explainers.base import Explainer, as_targets
from egl.losses._reduction import reduce
from egl.regularizers.base import Regularizer

__all__ = ["MixupTerms", "same_class_pairs", "mixup_consistency", "MixupConsistency"]


class MixupTerms(NamedTuple):
    """The three terms of ``L_reg`` and their weighted sum."""

    consistency: Tensor
    ce: Tensor
    sparsity: Tensor
    total: Tensor


def _check_indices(t: object, fn: str, arg: str, what: str, *, row_index: bool = False) -> Tensor:
    """A ``[B]`` integer tensor, not bool (nor uint8 for a ``row_index``: as an index, a bool or uint8
    tensor selects rows instead of naming them)."""
    t = check_shape(t, "B", fn, arg, floating=False)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool or (row_index and t.dtype == torch.uint8):
        raise fail(fn, arg, f"an integer tensor of {what}", describe(t), f"Pass {what} as a LongTensor ({arg}.long())")
    return t


def _check_draws(beta: object, partner: object, fn: str) -> tuple[Tensor, Tensor]:
    """``beta``: ``[B]`` real mixing weights; ``partner``: ``[B]`` integer indices (shapes and dtypes
    only: their values are not read, so nothing waits for the device)."""
    beta = check_shape(beta, "B", fn, "beta", floating=False)
    if beta.is_complex():
        raise fail(fn, "beta", "real mixing weights in [0, 1]", describe(beta), "Pass beta as a float tensor")
    return beta, _check_indices(partner, fn, "partner", "partner indices", row_index=True)


def same_class_pairs(target: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Partner index for every sample: a random other sample of the same class (itself if alone).

    Shape:
        target: ``B`` integer class indices; returns ``B`` (a permutation that maps each class onto itself).

    Raises:
        InputError: ``target`` is not a 1-D integer tensor (float labels would interleave classes
            in the sort and pair samples across them).
    """
    target = _check_indices(target, "egl.regularizers.same_class_pairs", "target", "class indices")
    b = target.shape[0]
    rand = upload(torch.rand(b, generator=generator, device="cpu"), target.device)  # (a CPU generator's draws)
    order = torch.argsort(target.to(torch.float64) * 2.0 + rand.to(torch.float64))  # by class, random within
    grp = target[order]
    k = torch.arange(b, device=target.device)
    is_start = torch.ones(b, dtype=torch.bool, device=target.device)
    is_start[1:] = grp[1:] != grp[:-1]
    is_end = torch.ones(b, dtype=torch.bool, device=target.device)
    is_end[:-1] = grp[1:] != grp[:-1]
    start = torch.where(is_start, k, torch.zeros_like(k)).cummax(0).values
    nxt = torch.where(is_end, start, k + 1)
    partner = torch.empty_like(order)
    partner[order] = order[nxt]
    return partner


def _check_weights(weights: object, fn: str) -> tuple[float, float, float]:
    """Three finite numbers >= 0 (a NaN or negative weight would silently break the loss)."""
    ok = isinstance(weights, (tuple, list)) and len(weights) == 3 and all(
        isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in weights)
    if not ok:
        raise fail(fn, "weights", "3 finite numbers >= 0 (consistency, ce, sparsity)", repr(weights)[:100],
                   "Pass e.g. weights=(1.0, 1.0, 1.0)")
    return tuple(float(w) for w in weights)  # type: ignore[return-value, union-attr]


def mixup_consistency(saliency: Tensor, saliency_mixed: Tensor, logits_mixed: Tensor, target: Tensor,
                      beta: Tensor, partner: Tensor, *, weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                      reduction: str = "mean", detach_target: bool = False) -> MixupTerms:
    """The terms of ``L_reg`` from explanations already computed.

    Args:
        saliency: ``Φ(x)`` of the unmixed batch.
        saliency_mixed: ``Φ(x̃)`` of the mixed batch (target class ``y``).
        logits_mixed: ``f(x̃)``.
        target: class of every sample (its partner has the same class).
        beta: mixing weight per sample, in [0, 1].
        partner: partner index per sample (see :func:`same_class_pairs`).
        weights: weights of (consistency, CE, sparsity).
        reduction: ``"mean"`` or ``"sum"`` over the batch (``"none"``: per-sample terms).
        detach_target: stop the consistency term's gradient through ``β Φ(x_i) + (1 − β) Φ(x_j)``
            (default False: it trains the unmixed maps too, as DRE's).

    Shape:
        saliency, saliency_mixed: ``B 1 h w``; logits_mixed: ``B K``; target, beta, partner: ``B``.

    Raises:
        InputError: a shape, a batch size or a dtype that does not fit (``target`` and ``partner``
            integer tensors, ``beta`` real), or bad ``weights`` / ``reduction``. Values are not read
            (no wait for the device): ``beta`` outside [0, 1] extrapolates, and the class range of
            ``target`` is checked where it is explained.
    """
    fn = "egl.regularizers.mixup_consistency"
    weights = _check_weights(weights, fn)
    check_shape(saliency, "B 1 H W", fn, "saliency")
    check_shape(saliency_mixed, "B 1 H W", fn, "saliency_mixed")
    check_shape(logits_mixed, "B K", fn, "logits_mixed")
    target = _check_indices(target, fn, "target", "class indices")
    beta, partner = _check_draws(beta, partner, fn)
    check_same_batch(fn, saliency=saliency, saliency_mixed=saliency_mixed, logits_mixed=logits_mixed,
                     target=target, beta=beta, partner=partner)
    if saliency.shape != saliency_mixed.shape:
        raise fail(fn, "saliency_mixed", f"the shape of 'saliency' {list(saliency.shape)}",
                   f"{list(saliency_mixed.shape)}", "Compute both with the same explainer settings")
    b = beta.to(saliency.dtype).view(-1, 1, 1, 1)
    mixed_target = b * saliency + (1.0 - b) * saliency[partner]
    if check_flag(detach_target, fn, "detach_target"):
        mixed_target = mixed_target.detach()
    consistency = reduce((mixed_target - saliency_mixed).abs(), reduction, fn)
    ce = reduce(F.cross_entropy(logits_mixed, target.long(), reduction="none"), reduction, fn)
    sparse = reduce(saliency_mixed.abs(), reduction, fn)
    total = weights[0] * consistency + weights[1] * ce + weights[2] * sparse
    return MixupTerms(consistency, ce, sparse, total)


class MixupConsistency(Regularizer):
    """Module form: pairs, mixes and explains, then calls :func:`mixup_consistency`.

    Args:
        alpha: Beta(α, α) concentration (default 0.2, DRE's value; ALIGN does not state it).
        weights: weights of (consistency, CE, sparsity) (default 1, 1, 1: Eq. 18).
        reduction: ``"mean"`` or ``"sum"``.
        detach_target: a fixed mixed target ``β Φ(x_i) + (1 − β) Φ(x_j)`` (default False: the
            consistency term trains the unmixed maps too, as DRE's).

    ``forward`` returns the weighted total; :meth:`terms` returns every term.
    """

    name = "mixup_consistency"
    inputs = "explanation"

    def __init__(self, alpha: float = 0.2, weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 reduction: str = "mean", detach_target: bool = False) -> None:
        super().__init__(reduction)
        self.detach_target = check_flag(detach_target, "egl.regularizers.MixupConsistency", "detach_target")
        self.alpha = check_positive(alpha, "egl.regularizers.MixupConsistency", "alpha", allow_zero=False)
        self.weights = _check_weights(weights, "egl.regularizers.MixupConsistency")

    def sample_beta(self, n: int, device: torch.device) -> Tensor:
        """``n`` draws of Beta(α, α) on ``device`` (from torch's global RNG, so seeds apply)."""
        return sample_beta(self.alpha, n, device)

    def terms(self, explainer: Explainer, x: Tensor, target: Any, saliency: Tensor | None = None, *,
              create_graph: bool = True, beta: Tensor | None = None, partner: Tensor | None = None) -> MixupTerms:
        """Every term of ``L_reg`` for a batch (``beta`` / ``partner`` override the random draws)."""
        fn = "egl.regularizers.MixupConsistency"
        if not callable(getattr(explainer, "explain", None)):
            raise fail(fn, "explainer", "an egl explainer (with an explain(x, target) method)", describe(explainer),
                       "Pass e.g. egl.explainers.GradCAM(model)")
        x = check_shape(x, "B C H W", fn, "x")
        t = as_targets(target, x.shape[0], fn, x.device)
        if t is None:
            raise fail(fn, "target", "the true class of every sample", "None", "Pass the labels y")
        if saliency is not None:  # (else a wrong batch size is blamed on the mixed batch's saliency)
            check_shape(saliency, "B 1 H W", fn, "saliency")
            check_same_batch(fn, x=x, saliency=saliency)
        # the explainer gets the spec as given: a host spec keeps its host range (no device read)
        spec = t if isinstance(target, Tensor) and target.device == x.device else target
        if saliency is None:
            saliency = explainer.explain(x, spec, create_graph=create_graph).saliency
        x_mixed, beta, partner = self.mix(x, t, beta=beta, partner=partner)
        mixed = explainer.explain(x_mixed, spec, create_graph=create_graph)
        return self.from_explanations(saliency, mixed.saliency, mixed.logits, t, beta, partner)

    def mix(self, x: Tensor, target: Tensor, *, beta: Tensor | None = None,
            partner: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(x̃, β, partner)``: same-class partners and β drawn (in that order) unless given.

        Shape:
            x: ``B C H W`` floating; target, beta, partner: ``B``.
        """
        fn = "egl.regularizers.MixupConsistency.mix"
        x = check_shape(x, "B C H W", fn, "x")  # (integer images would truncate β to 0: x̃ = x[partner])
        if partner is None:
            target = _check_indices(target, fn, "target", "class indices")
            check_same_batch(fn, x=x, target=target)
            partner = same_class_pairs(target)
        if beta is None:
            beta = self.sample_beta(x.shape[0], x.device)
        beta, partner = _check_draws(beta, partner, fn)
        check_same_batch(fn, x=x, beta=beta, partner=partner)
        b = beta.to(x.dtype).view(-1, 1, 1, 1)
        return b * x + (1.0 - b) * x[partner], beta, partner

    def from_explanations(self, saliency: Tensor, saliency_mixed: Tensor, logits_mixed: Tensor, target: Tensor,
                          beta: Tensor, partner: Tensor) -> MixupTerms:
        """:func:`mixup_consistency` with this module's weights and reduction (for callers that
        explain ``x`` and ``x̃`` in one pass: ALIGN's ``batch_mixup``)."""
        return mixup_consistency(saliency, saliency_mixed, logits_mixed, target, beta, partner,
                                 weights=self.weights, reduction=self.reduction,  # type: ignore[arg-type]
                                 detach_target=self.detach_target)

    def forward(self, explainer: Explainer, x: Tensor, target: Any, saliency: Tensor | None = None, *,
                create_graph: bool = True) -> Tensor:
        return self.terms(explainer, x, target, saliency, create_graph=create_graph).total

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, weights={self.weights}, reduction={self.reduction!r}"
                + (", detach_target=True" if self.detach_target else ""))
