"""Invariant risk minimisation (Arjovsky et al., "Invariant Risk Minimization", arXiv 1907.02893,
2019), the IRMv1 penalty as implemented in DomainBed (Gulrajani & Lopez-Paz, "In Search of Lost
Domain Generalization", ICLR 2021, ``algorithms.IRM``).

Per domain ``e`` in the batch, with ``s = 1.0`` a dummy scale multiplying the logits::

    penalty_e = (d CE(s·f(x_even), y_even) / d s) · (d CE(s·f(x_odd), y_odd) / d s)

where even/odd are the even- and odd-indexed samples of that domain (an unbiased estimate of
the squared gradient, computed with ``create_graph=True``). Then::

    L = mean_e CE_e + λ · mean_e penalty_e,   λ = penalty_weight (100) from step anneal_steps (500) on, 1 before

and at step ``anneal_steps`` the optimiser's state is reset ("Adam doesn't like the sharp jump
in gradient magnitudes", DomainBed).

Choices and deviations (all arguments where they matter):

* Batches are drawn as they come (DomainBed draws one mini-batch per domain): the domains'
  counts vary from batch to batch, and each domain's CE and penalty are those of its samples in
  the batch (``data.balance: domain`` in experiments draws the domains evenly, in expectation).
* ``rescale=False`` (DomainBed): the loss is *not* divided by λ once λ > 1. The original IRM
  code (Colored MNIST) does divide; ``rescale=True`` does that.
* The CE is DomainBed's: the mean over domains of each domain's mean CE (equal to the batch
  mean when domains have equal sizes).
* A domain with fewer than 2 samples in the batch has no even/odd split: its CE counts, its
  penalty is left out of the mean (penalty 0 when no domain has 2 samples).
* All domains go through the model as one batch, as DomainBed does (``all_x``).
* Under ``torch.distributed`` the logits and labels of every rank are gathered
  (:mod:`egl.train.global_batch`): every rank computes the global batch's risks and even/odd
  penalties (the samples in rank order), and the averaged gradients are those of one process
  on the global batch.
* The reset happens in :meth:`IRM.training_step` (used by ``recipe.fit``; shared with VREx,
  :class:`egl.recipes._anneal.AnnealedPenalty`): the optimiser keeps its identity and param
  groups and loses its state. Custom loops call :meth:`IRM.reset_optimizer` at
  :attr:`IRM.anneal_steps`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_flag, check_int, check_positive, check_shape, fail
from egl.explainers.base import check_target_range
from egl.recipes._anneal import AnnealedPenalty
from egl.recipes._domains import global_groups, group_keys, require_domains
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["IRM", "irm", "irm_penalty"]


def irm_penalty(logits: Tensor, target: Tensor) -> Tensor:
    """IRMv1 penalty of one domain: the product of the gradients, with respect to a dummy
    scale ``s = 1`` on the logits, of the CE on the even and on the odd samples.

    Differentiable with respect to ``logits`` (``create_graph=True``).

    Shape:
        logits: ``B K`` with ``B >= 2``; target: ``B``; returns a 0-d tensor.
    """
    fn = "egl.recipes.irm_penalty"
    check_shape(logits, "B K", fn, "logits")
    if logits.shape[0] < 2:
        raise fail(fn, "logits", "at least 2 samples (an even and an odd half)", f"{logits.shape[0]}",
                   "Give each domain at least 2 samples per batch")
    logits = logits.float()  # a product of two small gradients: float16 would flush it to zero
    with torch.enable_grad():
        scale = torch.ones((), dtype=logits.dtype, device=logits.device, requires_grad=True)
        loss_1 = F.cross_entropy(logits[::2] * scale, target[::2])
        loss_2 = F.cross_entropy(logits[1::2] * scale, target[1::2])
        g1 = torch.autograd.grad(loss_1, scale, create_graph=True)[0]
        g2 = torch.autograd.grad(loss_2, scale, create_graph=True)[0]
    return g1 * g2


class IRM(AnnealedPenalty, Recipe):
    """IRM (IRMv1 penalty, DomainBed's schedule) on any classifier; needs domain labels.

    Args:
        model: the classifier.
        penalty_weight: λ after annealing (100, DomainBed's default ``irm_lambda``).
        anneal_steps: steps with λ = 1 before λ = ``penalty_weight`` (500, DomainBed's
            ``irm_penalty_anneal_iters``); the optimiser state is reset at this step.
        rescale: divide the loss by λ once λ > 1 (original IRM code); ``False`` as DomainBed.
        lr: Adam learning rate (5e-5). weight_decay: (0). optimizer: ``"adam"`` (see
            :mod:`egl.recipes.optimizer`).

    Logged terms: ``ce``, ``penalty``, ``penalty_weight`` (λ at this step), ``total``.

    Example:
        >>> import timm, torch
        >>> from egl.recipes.irm import irm
        >>> recipe = irm(timm.create_model("test_resnet", num_classes=3))
        >>> batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 1]))
        >>> sorted(recipe.compute_phase("classifier", batch, 0))
        ['ce', 'penalty', 'penalty_weight', 'total']
    """

    name = "irm"
    needs_domains = True

    def __init__(self, model: nn.Module, *, penalty_weight: float = 100.0, anneal_steps: int = 500,
                 rescale: bool = False, lr: float = 5e-5, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        fn = "egl.recipes.irm"
        self.penalty_weight = check_positive(penalty_weight, fn, "penalty_weight")
        self.anneal_steps = check_int(anneal_steps, fn, "anneal_steps", fix="Pass a number of steps")
        self.rescale = check_flag(rescale, fn, "rescale")

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        from egl.train.global_batch import before_gather  # lazy: egl.train imports the recipes

        fn = "egl.recipes.irm"
        self.model.train(self.training)
        with before_gather(batch.x.device):
            require_domains(batch, fn, "IRM")
            keys = group_keys(batch, "domain", fn, "IRM")
            logits = self._logits(batch.x)
            check_target_range(batch.y, logits.shape[1], fn)
        groups, (logits, y) = global_groups(keys, logits, batch.y, fn=fn)
        ce = torch.stack([F.cross_entropy(logits[g], y[g]) for g in groups]).mean()
        penalties = [irm_penalty(logits[g], y[g]) for g in groups if g.numel() >= 2]
        penalty = torch.stack(penalties).mean() if penalties else logits.new_zeros(())
        weight = self.weight_at(step)
        total = ce + weight * penalty
        if self.rescale and weight > 1.0:
            total = total / weight
        weight_t = torch.full((), float(weight), device=logits.device)  # (no upload: a fill)
        return {"ce": ce, "penalty": penalty, "penalty_weight": weight_t, "total": total}


@builds(IRM)
def irm(model: nn.Module, **kwargs: Any) -> IRM:
    """Build an :class:`IRM` recipe (batches must carry domains: ``(x, y, domain)``)."""
    return IRM(model, **kwargs)
