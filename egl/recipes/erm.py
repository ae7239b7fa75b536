"""Empirical risk minimisation: cross-entropy only (the paper's first baseline; DomainBed's
defaults: Adam, lr 5e-5, weight decay 0)."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from egl.explainers.base import check_target_range
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["ERM", "erm"]


class ERM(Recipe):
    """Cross-entropy on the classifier, one phase.

    Example:
        >>> import timm, torch
        >>> from egl import recipes
        >>> recipe = recipes.erm(timm.create_model("test_resnet", num_classes=3))
        >>> terms = recipe.compute_phase("classifier", (torch.randn(2, 3, 32, 32), torch.tensor([0, 2])), 0)
        >>> sorted(terms)
        ['ce', 'total']
    """

    name = "erm"

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        self.model.train(self.training)
        logits = self._logits(batch.x)
        ce = F.cross_entropy(logits, check_target_range(batch.y, logits.shape[1], "egl.recipes.erm"))
        return {"ce": ce, "total": ce}


@builds(ERM)
def erm(model: nn.Module, **kwargs: Any) -> ERM:
    """Build an :class:`ERM` recipe."""
    return ERM(model, **kwargs)
