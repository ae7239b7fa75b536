"""DRE, distributionally robust explanations (Li et al., "Are Data-driven Explanations Robust
against Out-of-distribution Data?", CVPR 2023; authors' code public).

Within each class of the batch, samples are permuted (``π``) and mixed with a per-sample
``λ ~ Beta(0.2, 0.2)``: ``x̃ = λ x + (1 − λ) x_π``. With ``Ĝ`` the explanation below::

    consistency = |Ĝ(x̃) − (λ Ĝ(x) + (1 − λ) Ĝ(x_π))|_1      (weight 1.0; the target is not detached)
    sparsity    = (|Ĝ(x)|_1 + |Ĝ(x̃)|_1) / 2                  (weight 0.5)
    mix_ce      = CE(f(x̃), y)                                 (weight 0.1)
    L = CE(f(x), y) + 1.0·consistency + 0.5·sparsity + 0.1·mix_ce

``Ĝ``: Grad-CAM of the true class at the last feature stage, *signed* (no ReLU), min-max
normalised per sample, at the feature map's resolution, with the channel weights treated as
constants: gradients reach the model through the activations only
(``GradCAM(relu=False, detach_weights=True, upsample=False)``).

Choices and deviations (all arguments where they matter):

* ``|·|_1`` are element-wise means over the map (the authors' code takes a matrix 1-norm for
  the sparsity); per-sample values are averaged within each class, summed over the classes
  present and divided by the number of classes of the model (``class_mean="all"``, the
  authors' ``/num_classes``; ``"present"`` divides by the classes present), vectorised over
  the batch.
* The two maps' sparsities are averaged, as the authors' ``mixuploss.py`` does (``(… + …) / 2``),
  so ``sparsity_weight=0.5`` weighs them as there.
* The plain CE on ``x`` is not in the method's summary of the loss; it is in the authors'
  ``train.py`` (``ce_loss + exp_weight·exp_loss + sparse_weight·sparse_loss + mix_ce_weight·mix_ce_loss``).
  It is the batch mean, computed from the logits of Grad-CAM's own forward pass (one forward
  for ``x``, one for ``x̃``).
* ``π`` is a uniformly random permutation within each class (``randperm``), so a sample
  may be mixed with itself; a class alone in the batch always is (its consistency term is 0).
* The paper trains a ResNet-50 with frozen BatchNorm (DomainBed's); here BatchNorm follows
  the model's mode like every recipe: ``dre(freeze_batchnorm(model))`` gives the paper's
  protocol (:func:`egl.recipes.freeze_batchnorm`). λ and π come from torch's global RNG (``fit(seed=...)``
  fixes them); override :meth:`DRE.sample_lam` / :meth:`DRE.sample_partner` to fix them otherwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_choice, check_positive, check_same_batch, check_shape
from egl._sampling import sample_beta
from egl._transfer import upload
from egl.explainers.grad_cam import GradCAM
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["DRE", "dre", "DRETerms", "dre_terms", "class_permutation"]

#: How the per-class values become one term: over the model's classes (the authors') or those present.
CLASS_MEANS = ("all", "present")


class DRETerms(NamedTuple):
    """DRE's three regularisation terms, each averaged within classes then over classes."""

    consistency: Tensor
    sparsity: Tensor
    mix_ce: Tensor


def class_permutation(target: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Partner index of every sample: a uniformly random permutation within each class.

    Shape:
        target: ``B``; returns ``B`` (``target[partner] == target``).
    """
    b = target.shape[0]
    key = target.to(torch.float64).cpu() * 2.0
    src = torch.argsort(key + torch.rand(b, generator=generator, dtype=torch.float64))  # by class, random within
    dst = torch.argsort(key + torch.rand(b, generator=generator, dtype=torch.float64))
    partner = torch.empty(b, dtype=torch.long)
    partner[src] = dst  # the k-th sample of a class in one random order meets the k-th in another
    return upload(partner, target.device)


def _class_mean(values: Tensor, inverse: Tensor, counts: Tensor, divisor: int | None) -> Tensor:
    """Mean over samples within each class, summed over the classes present, divided by
    ``divisor`` (``None``: the number of classes present)."""
    sums = values.new_zeros(counts.shape[0]).index_add(0, inverse, values)
    per_class = sums / counts
    return per_class.mean() if divisor is None else per_class.sum() / divisor


def dre_terms(saliency: Tensor, saliency_mixed: Tensor, logits_mixed: Tensor, target: Tensor, lam: Tensor,
              partner: Tensor, target_on_host: Tensor | None = None, *, class_mean: str = "all") -> DRETerms:
    """DRE's terms from explanations already computed.

    Args:
        saliency: ``Ĝ(x)``. saliency_mixed: ``Ĝ(x̃)``. logits_mixed: ``f(x̃)``.
        target: class of every sample (its partner has the same class).
        lam: mixing weight per sample. partner: partner index per sample.
        target_on_host: the same classes on the CPU (:meth:`egl.recipes.Batch.labels_on_host`):
            the classes are counted there (``unique`` on a GPU tensor synchronises).

    Shape:
        saliency, saliency_mixed: ``B 1 H W``; logits_mixed: ``B K``; target, lam, partner: ``B``.
    """
    fn = "egl.recipes.dre_terms"
    check_choice(class_mean, CLASS_MEANS, fn, "class_mean")
    check_shape(saliency, "B 1 H W", fn, "saliency")
    check_shape(saliency_mixed, "B 1 H W", fn, "saliency_mixed")
    check_shape(logits_mixed, "B K", fn, "logits_mixed")
    check_same_batch(fn, saliency=saliency, saliency_mixed=saliency_mixed, logits_mixed=logits_mixed,
                     target=target, lam=lam, partner=partner)
    lv = lam.to(saliency.dtype).view(-1, 1, 1, 1)
    mixed_target = lv * saliency + (1.0 - lv) * saliency[partner]
    consistency = (saliency_mixed - mixed_target).abs().flatten(1).mean(1)
    sparse = (saliency.abs().flatten(1).mean(1) + saliency_mixed.abs().flatten(1).mean(1)) / 2  # as the authors
    ce = F.cross_entropy(logits_mixed, target, reduction="none")
    src = target if target_on_host is None else target_on_host
    _, inverse, counts = torch.unique(src, return_inverse=True, return_counts=True)
    inverse = upload(inverse, target.device)
    counts = upload(counts, saliency.device, saliency.dtype)
    divisor = int(logits_mixed.shape[1]) if class_mean == "all" else None
    return DRETerms(_class_mean(consistency, inverse, counts, divisor), _class_mean(sparse, inverse, counts, divisor),
                    _class_mean(ce, inverse, counts, divisor))


class DRE(Recipe):
    """DRE on any classifier (domain labels not needed).

    Args:
        model: the classifier.
        alpha: Beta(α, α) concentration of the per-sample λ (0.2, the paper's).
        consistency_weight: (1.0). sparsity_weight: (0.5). mix_ce_weight: (0.1) -- the paper's.
        layer: Grad-CAM target layer (``"auto"``: the last feature stage).
        class_mean: ``"all"`` (default: the per-class values summed over the classes present in
            the batch, divided by the model's number of classes, as METHODS.md and the authors'
            ``mixuploss.py`` do) or ``"present"`` (divided by the number of classes present: a
            plain mean over them, weighing the terms more when few classes are in the batch).
        lr: Adam learning rate (5e-5, the paper's). weight_decay: (0). optimizer: ``"adam"`` (see
            :mod:`egl.recipes.optimizer`).

    Logged terms: ``ce``, ``consistency``, ``sparsity``, ``mix_ce``, ``total``.

    Example:
        >>> import timm, torch
        >>> from egl.recipes.dre import dre
        >>> recipe = dre(timm.create_model("test_resnet", num_classes=3))
        >>> terms = recipe.compute_phase("classifier", (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])), 0)
        >>> sorted(terms)
        ['ce', 'consistency', 'mix_ce', 'sparsity', 'total']
    """

    name = "dre"
    needs_domains = False

    def __init__(self, model: nn.Module, *, alpha: float = 0.2, consistency_weight: float = 1.0,
                 sparsity_weight: float = 0.5, mix_ce_weight: float = 0.1, layer: str = "auto",
                 class_mean: str = "all", lr: float = 5e-5, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        fn = "egl.recipes.dre"
        self.alpha = check_positive(alpha, fn, "alpha", allow_zero=False)
        self.consistency_weight = check_positive(consistency_weight, fn, "consistency_weight")
        self.sparsity_weight = check_positive(sparsity_weight, fn, "sparsity_weight")
        self.mix_ce_weight = check_positive(mix_ce_weight, fn, "mix_ce_weight")
        check_choice(class_mean, CLASS_MEANS, fn, "class_mean")
        self.class_mean = class_mean
        self.explainer = GradCAM(model, layer, upsample=False, normalize=True, relu=False, detach_weights=True)

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def sample_lam(self, n: int, device: torch.device) -> Tensor:
        """``n`` draws of Beta(α, α), one per sample (torch's global RNG)."""
        return sample_beta(self.alpha, n, device)

    def sample_partner(self, target: Tensor) -> Tensor:
        """Partner of every sample: a random permutation within its class (drawn on the CPU,
        returned on ``target``'s device)."""
        return class_permutation(target)

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        self.model.train(self.training)
        x, y = batch.x, batch.y
        out = self.explainer.explain(x, y, create_graph=True)
        host_y = batch.labels_on_host()  # labels that came from the CPU: no read back from the device
        partner = upload(self.sample_partner(y if host_y is None else host_y), y.device)
        lam = self.sample_lam(x.shape[0], x.device)
        check_shape(lam, f"{x.shape[0]}", "egl.recipes.DRE.sample_lam", "lam")
        lv = lam.to(x.dtype).view(-1, 1, 1, 1)
        mixed = self.explainer.explain(lv * x + (1.0 - lv) * x[partner], y, create_graph=True)
        reg = dre_terms(out.saliency, mixed.saliency, mixed.logits, y, lam, partner, host_y,
                        class_mean=self.class_mean)
        ce = F.cross_entropy(out.logits, y)
        total = (ce + self.consistency_weight * reg.consistency + self.sparsity_weight * reg.sparsity
                 + self.mix_ce_weight * reg.mix_ce)
        return {"ce": ce, "consistency": reg.consistency, "sparsity": reg.sparsity, "mix_ce": reg.mix_ce,
                "total": total}


@builds(DRE)
def dre(model: nn.Module, **kwargs: Any) -> DRE:
    """Build a :class:`DRE` recipe."""
    return DRE(model, **kwargs)
