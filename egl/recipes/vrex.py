"""Variance risk extrapolation, V-REx (Krueger et al., "Out-of-Distribution Generalization via
Risk Extrapolation (REx)", ICML 2021), as DomainBed implements it (``algorithms.VREx``).

With ``L_e`` the mean cross-entropy of the batch's samples in domain (group) ``e``::

    L = mean_e L_e + λ · mean_e (L_e - mean_e' L_e')²

the variance of the per-domain risks pushes the model towards equal risk in every training
domain. λ = ``penalty_weight`` (10, DomainBed's ``vrex_lambda``) from step ``anneal_steps``
(500, ``vrex_penalty_anneal_iters``) on, 1 before; at step ``anneal_steps`` the optimiser's
state is reset, as DomainBed does (the schedule IRM uses, :mod:`egl.recipes._anneal`).

Choices (arguments where they matter):

* The variance is the population one (divided by the number of domains, DomainBed's).
* ``groups="domain"`` (default, DomainBed). The risks can also be those of other groups of the
  batch: ``"class"``, ``"domain_class"`` ((domain, class) pairs) or ``"shortcut"`` ((class,
  shortcut) pairs, the groups GroupDRO uses on Waterbirds-like data); a group is a distinct
  label value of the batch (no numbering assumed).
* Batches are drawn as they come (DomainBed draws one mini-batch per domain): the risks are
  those of the groups present in the batch, each weighing the same in the mean whatever its
  size; a batch holding one group has no penalty (0).
* The risks are computed in float32 (under float16 autocast too).
* Under ``torch.distributed`` the per-sample losses and group labels of every rank are gathered
  (:mod:`egl.train.global_batch`): every rank computes the global batch's risks, variance and
  logged terms, and the averaged gradients are those of one process on the global batch.

Logged terms: ``ce`` (mean of the groups' risks), ``penalty`` (their variance),
``penalty_weight`` (λ at this step), ``total``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_choice, check_int, check_positive
from egl.data.group_balance import GROUPINGS
from egl.explainers.base import check_target_range
from egl.recipes._anneal import AnnealedPenalty
from egl.recipes._domains import global_groups, group_keys
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["VREx", "vrex", "risk_variance"]

FN = "egl.recipes.vrex"


def risk_variance(risks: Tensor) -> Tensor:
    """V-REx's penalty: the population variance of the per-group risks (0 for one group).

    Shape:
        risks: ``G`` with ``G >= 1``; returns a 0-d tensor.
    """
    return (risks - risks.mean()).pow(2).mean()


class VREx(AnnealedPenalty, Recipe):
    """V-REx (DomainBed's schedule) on any classifier; needs domain labels with the default groups.

    Args:
        model: the classifier.
        penalty_weight: λ after annealing (10, DomainBed's ``vrex_lambda``).
        anneal_steps: steps with λ = 1 before λ = ``penalty_weight`` (500, DomainBed's
            ``vrex_penalty_anneal_iters``); the optimiser state is reset at this step.
        groups: whose risks are equalised: ``"domain"`` (default, DomainBed), ``"class"``,
            ``"domain_class"`` or ``"shortcut"`` (see the module docstring).
        lr, weight_decay, optimizer: the classifier's optimiser (5e-5, 0, ``"adam"``; see
            :mod:`egl.recipes.optimizer`).

    Example:
        >>> import timm, torch
        >>> from egl import recipes
        >>> recipe = recipes.vrex(timm.create_model("test_resnet", num_classes=3))
        >>> batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 1]))
        >>> sorted(recipe.compute_phase("classifier", batch, 0))
        ['ce', 'penalty', 'penalty_weight', 'total']
    """

    name = "vrex"

    @property
    def compares_domains(self) -> bool:
        return self.groups == "domain"

    def __init__(self, model: nn.Module, *, penalty_weight: float = 10.0, anneal_steps: int = 500,
                 groups: str = "domain", lr: float = 5e-5, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        self.penalty_weight = check_positive(penalty_weight, FN, "penalty_weight")
        self.anneal_steps = check_int(anneal_steps, FN, "anneal_steps", fix="Pass a number of steps")
        check_choice(groups, GROUPINGS, FN, "groups")
        self.groups = groups

    @property
    def needs_domains(self) -> bool:  # type: ignore[override]
        """Whether batches must carry domain labels (``groups="domain"`` or ``"domain_class"``)."""
        return self.groups in ("domain", "domain_class")

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        from egl.train.global_batch import before_gather  # lazy: egl.train imports the recipes

        self.model.train(self.training)
        with before_gather(batch.x.device):
            keys = group_keys(batch, self.groups, FN, "VREx")
            logits = self._logits(batch.x)
            check_target_range(batch.y, logits.shape[1], FN)
        per = F.cross_entropy(logits, batch.y, reduction="none")
        per = per.to(dtype=torch.promote_types(per.dtype, torch.float32))
        groups, (per,) = global_groups(keys, per, fn=FN)
        risks = torch.stack([per[g].mean() for g in groups])
        ce = risks.mean()
        penalty = risk_variance(risks)
        weight = self.weight_at(step)
        weight_t = torch.full((), float(weight), device=logits.device)  # (no upload: a fill)
        return {"ce": ce, "penalty": penalty, "penalty_weight": weight_t, "total": ce + weight * penalty}


@builds(VREx)
def vrex(model: nn.Module, **kwargs: Any) -> VREx:
    """Build a :class:`VREx` recipe (with the default groups, batches must carry domains: ``(x, y, domain)``)."""
    return VREx(model, **kwargs)
