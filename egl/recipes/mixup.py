"""Inter-domain mixup as in DomainBed (Gulrajani & Lopez-Paz, "In Search of Lost Domain
Generalization", ICLR 2021, ``algorithms.Mixup``), after Xu et al. ("Adversarial Domain
Adaptation with Domain Mixup", AAAI 2020) and Yan et al. ("Improve Unsupervised Domain
Adaptation with Mixup Training", arXiv 2001.00677, 2020); mixup itself is Zhang et al.
("mixup: Beyond Empirical Risk Minimization", ICLR 2018).

The batch is split by domain; the domains are put in a random cycle ``d_0 → d_1 → … → d_0``;
each pair ``(d_k, d_{k+1})`` mixes the first ``n = min(n_k, n_{k+1})`` samples of each with one
``λ ~ Beta(α, α)`` (α = 0.2, DomainBed's ``mixup_alpha``)::

    x̃ = λ x_i + (1 − λ) x_j,    L_pair = λ CE(f(x̃), y_i) + (1 − λ) CE(f(x̃), y_j)

and ``L`` is the mean of ``L_pair`` over the pairs (as many as domains). Inputs are mixed,
labels enter only through the loss.

Choices and deviations:

* Batches are drawn as they come (DomainBed draws one mini-batch per domain): the domains'
  counts vary from batch to batch, and each pair is cut to the smaller domain's count.
* One domain in the batch: DomainBed would pair the domain with itself (``x̃ = x``, plain
  ERM). We fall back to ordinary within-batch mixup instead: the domain is paired with a
  random permutation of itself (a sample may meet itself), still one λ for the pair.
* All mixed pairs go through the model as one batch (DomainBed runs one forward pass per
  pair): the same loss for models without batch statistics; BatchNorm in train mode sees
  the whole mixed batch instead of one pair at a time.
* Samples of a domain are taken in batch order (DomainBed's minibatches are already shuffled).
* λ and the cycle come from torch's global RNG (so ``fit(seed=...)`` fixes them); override
  :meth:`Mixup.sample_lam` / :meth:`Mixup.sample_cycle` to fix them otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_positive, check_shape
from egl._sampling import sample_beta
from egl._transfer import upload
from egl.explainers.base import check_target_range
from egl.recipes._domains import domain_groups, require_domains
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["Mixup", "mixup", "domain_pairs"]


def domain_pairs(domain: Tensor, cycle: list[int], generator: torch.Generator | None = None, *,
                 groups: list[Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
    """Index pairs ``(i, j)`` of the inter-domain mixup: domain ``cycle[k]`` with ``cycle[k+1]``
    (wrapping around), each truncated to the smaller domain's size. With one domain, its
    samples are paired with a random permutation of themselves.

    Args:
        domain: domain label of every sample.
        cycle: a permutation of ``range(number of domains present)``, domains sorted by label.
        generator: randomness of the one-domain permutation.
        groups: :func:`egl.recipes._domains.domain_groups` of ``domain``, when already found.

    Shape:
        domain: ``B``; returns one pair of equal-length index tensors per domain.
    """
    groups = domain_groups(domain) if groups is None else groups
    if len(groups) == 1:
        g = groups[0]
        perm = upload(torch.randperm(g.numel(), generator=generator), g.device)
        return [(g, g[perm])]
    pairs = []
    for k in range(len(cycle)):
        gi, gj = groups[cycle[k]], groups[cycle[(k + 1) % len(cycle)]]
        n = min(gi.numel(), gj.numel())
        pairs.append((gi[:n], gj[:n]))
    return pairs


class Mixup(Recipe):
    """Inter-domain mixup (DomainBed) on any classifier; needs domain labels.

    Args:
        model: the classifier.
        alpha: Beta(α, α) concentration (0.2, DomainBed's ``mixup_alpha``).
        lr: Adam learning rate (5e-5). weight_decay: (0). optimizer: ``"adam"`` (see
            :mod:`egl.recipes.optimizer`).

    Logged terms: ``mix_ce`` (the mixed cross-entropy) and ``total`` (the same).

    Example:
        >>> import timm, torch
        >>> from egl.recipes.mixup import mixup
        >>> recipe = mixup(timm.create_model("test_resnet", num_classes=3))
        >>> batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 1]))
        >>> sorted(recipe.compute_phase("classifier", batch, 0))
        ['mix_ce', 'total']
    """

    name = "mixup"
    needs_domains = True

    def __init__(self, model: nn.Module, *, alpha: float = 0.2, lr: float = 5e-5,
                 weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        self.alpha = check_positive(alpha, "egl.recipes.mixup", "alpha", allow_zero=False)

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def sample_lam(self, n: int, device: torch.device) -> Tensor:
        """``n`` draws of Beta(α, α), one per pair (torch's global RNG)."""
        return sample_beta(self.alpha, n, device)

    def sample_cycle(self, n: int) -> list[int]:
        """A random order of the ``n`` domains present (DomainBed's ``randperm``)."""
        return torch.randperm(n).tolist()

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        domain = require_domains(batch, "egl.recipes.mixup", "Mixup")
        self.model.train(self.training)
        groups = domain_groups(domain, batch.domain_on_host())
        pairs = domain_pairs(domain, self.sample_cycle(len(groups)), groups=groups)
        lam = self.sample_lam(len(pairs), batch.x.device)
        check_shape(lam, f"{len(pairs)}", "egl.recipes.Mixup.sample_lam", "lam")
        lam = lam.to(batch.x.dtype)
        x_mixed = torch.cat([lam[k] * batch.x[i] + (1.0 - lam[k]) * batch.x[j] for k, (i, j) in enumerate(pairs)])
        logits = self._logits(x_mixed)
        check_target_range(batch.y, logits.shape[1], "egl.recipes.mixup")
        logits = logits.split([i.numel() for i, _ in pairs])
        losses = [lam[k] * F.cross_entropy(out, batch.y[i]) + (1.0 - lam[k]) * F.cross_entropy(out, batch.y[j])
                  for k, (out, (i, j)) in enumerate(zip(logits, pairs))]
        loss = torch.stack(losses).mean()
        return {"mix_ce": loss, "total": loss}


@builds(Mixup)
def mixup(model: nn.Module, **kwargs: Any) -> Mixup:
    """Build a :class:`Mixup` recipe (batches must carry domains: ``(x, y, domain)``)."""
    return Mixup(model, **kwargs)
