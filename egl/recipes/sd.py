"""Spectral decoupling (Pezeshki et al., "Gradient Starvation: A Learning Proclivity in Neural
Networks", NeurIPS 2021), as DomainBed implements it (``algorithms.SD``)::

    L = CE(f(x), y) + λ · mean((f(x) − γ)²)

an L2 penalty on the logits themselves (not the weights). Gradient starvation is the paper's
name for what a shortcut does: once a feature that is quick to learn (a background) fits the
training set, the cross-entropy's gradient vanishes for the others. Keeping the logits small
keeps the loss, and so the gradient, alive for the features learnt later. No extra labels.

Choices (arguments where they matter):

* ``penalty_weight=0.1``: DomainBed's ``sd_reg``; its penalty is the mean over every logit of
  the batch (``B · K`` values), as here.
* ``target=0.0``: the paper's γ (its general form ``λ/2 · ||ŷ − γ||²``, with per-class λ and
  γ, tunes both; DomainBed's has γ = 0). One γ for every class here.
* The penalty is computed in float32 (under float16 autocast too).

Logged terms: ``ce``, ``penalty`` (the mean squared deviation of the logits from ``target``),
``total``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_positive, fail
from egl.explainers.base import check_target_range
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["SD", "sd"]

FN = "egl.recipes.sd"


class SD(Recipe):
    """Spectral decoupling (DomainBed's) on any classifier: cross-entropy plus an L2 penalty on the logits.

    Args:
        model: the classifier.
        penalty_weight: λ (0.1, DomainBed's ``sd_reg``).
        target: γ, the value the logits are pulled towards (0, DomainBed's).
        lr, weight_decay, optimizer: the classifier's optimiser (5e-5, 0, ``"adam"``; see
            :mod:`egl.recipes.optimizer`).

    Example:
        >>> import timm, torch
        >>> from egl import recipes
        >>> recipe = recipes.sd(timm.create_model("test_resnet", num_classes=3))
        >>> sorted(recipe.compute_phase("classifier", (torch.randn(2, 3, 32, 32), torch.tensor([0, 2])), 0))
        ['ce', 'penalty', 'total']
    """

    name = "sd"

    def __init__(self, model: nn.Module, *, penalty_weight: float = 0.1, target: float = 0.0, lr: float = 5e-5,
                 weight_decay: float = 0.0, optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        self.penalty_weight = check_positive(penalty_weight, FN, "penalty_weight")
        ok = isinstance(target, (int, float)) and not isinstance(target, bool) and abs(target) < float("inf")
        if not ok:
            raise fail(FN, "target", "a finite number (the value the logits are pulled towards)", repr(target)[:100],
                       "Pass e.g. target=0.0 (DomainBed's)")
        self.target = float(target)

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        self.model.train(self.training)
        logits = self._logits(batch.x)
        ce = F.cross_entropy(logits, check_target_range(batch.y, logits.shape[1], FN))
        penalty = (logits.to(dtype=torch.promote_types(logits.dtype, torch.float32)) - self.target).pow(2).mean()
        return {"ce": ce, "penalty": penalty, "total": ce + self.penalty_weight * penalty}


@builds(SD)
def sd(model: nn.Module, **kwargs: Any) -> SD:
    """Build an :class:`SD` recipe."""
    return SD(model, **kwargs)
