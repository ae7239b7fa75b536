"""DomainBed's penalty schedule, shared by IRM and VREx: the penalty's weight is 1 before
``anneal_steps`` and ``penalty_weight`` from then on, and at step ``anneal_steps`` the optimiser
forgets its state ("Adam doesn't like the sharp jump in gradient magnitudes", DomainBed)."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["AnnealedPenalty"]


class AnnealedPenalty:
    """Mixin for a :class:`egl.recipes.Recipe` with ``penalty_weight`` and ``anneal_steps``
    attributes (put it before ``Recipe`` in the bases).

    The reset happens in :meth:`training_step` (used by ``recipe.fit``): the optimiser of the
    classifier phase keeps its identity and param groups (learning rate included) and loses its
    state (Adam's moments and step count), which is what DomainBed's re-creating Adam does with a
    constant learning rate. Custom loops call :meth:`reset_optimizer` at ``anneal_steps``.
    """

    penalty_weight: float
    anneal_steps: int

    def weight_at(self, step: int) -> float:
        """The penalty's weight at ``step``: 1 before ``anneal_steps``, ``penalty_weight`` from then on."""
        return self.penalty_weight if step >= self.anneal_steps else 1.0

    @staticmethod
    def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
        """Forget ``optimizer``'s state in place (Adam's moments and step count), keeping its param groups."""
        optimizer.state.clear()

    def training_step(self, batch: Any, step: int, optimizers: dict[str, torch.optim.Optimizer],
                      **kwargs: Any) -> dict[str, float]:
        """:meth:`egl.recipes.Recipe.training_step`, after resetting the optimiser at step ``anneal_steps``."""
        if step == self.anneal_steps:
            self.reset_optimizer(optimizers["classifier"])
        return super().training_step(batch, step, optimizers, **kwargs)  # type: ignore[misc]
