"""Feature-distribution matching across domains, as DomainBed implements it
(``algorithms.CORAL`` and ``algorithms.MMD``, both ``AbstractMMD``):

* CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV
  Workshops 2016): the distance of two domains' features is
  ``mean((μ_a − μ_b)²) + mean((C_a − C_b)²)``, with ``μ`` the mean feature and ``C`` the
  covariance (divided by ``n − 1``).
* MMD (Li et al., "Domain Generalization with Adversarial Feature Learning", CVPR 2018; the
  kernel two-sample distance of Gretton et al.): ``mean k(a, a') + mean k(b, b') − 2 mean k(a, b)``
  with ``k`` a sum of Gaussian kernels ``exp(−γ |u − v|²)`` over γ in
  (0.001, 0.01, 0.1, 1, 10, 100, 1000) (DomainBed's; ``gammas=``), means over all pairs
  (the diagonal included, DomainBed's biased estimate).

With ``L_e`` the mean cross-entropy of domain ``e``'s samples in the batch::

    L = mean_e L_e + γ_pen · mean_{e < e'} distance(Φ_e, Φ_e')

γ_pen = ``penalty_weight`` (1, DomainBed's ``mmd_gamma``). The features ``Φ`` are the input of
the classifier's last layer (DomainBed's featurizer output), read during the model's own
forward pass: ``model.get_classifier()`` for timm models, or the module named by
``classifier=``.

Choices (arguments where they matter):

* Batches are drawn as they come (DomainBed draws one mini-batch per domain): every domain of
  the batch counts in the cross-entropy; only domains with at least 2 samples in the batch
  take part in the penalty (a covariance needs two; one image is no distribution), and a
  batch with fewer than two such domains has no penalty (0).
* Features and distances are computed in float32 at least, with autocast off (under float16
  autocast a covariance of features of scale 100 overflows; under bfloat16 an MMD lost 10 %).
* All domains go through the model as one batch, as DomainBed's ``all_x``; DomainBed then
  runs its featurizer once per domain, so BatchNorm in train mode normalises each domain alone
  there and the mixed batch here (the same for frozen BatchNorm, as DomainBed's ResNets have).
* Under ``torch.distributed`` the features, per-sample losses and domains of every rank are
  gathered (:mod:`egl.train.global_batch`): every rank computes the global batch's moments or
  kernel means, and the averaged gradients are those of one process on the global batch.
* MMD computes one kernel matrix over the batch and takes each pair's block means from it
  (DomainBed's three kernels per pair give the same numbers), with squared distances from the
  differences of the features (DomainBed expands ``|u|² + |v|² − 2 u·v``, whose float32
  cancellation moves the kernels of near-equal features by percents at γ = 1000).

Logged terms: ``ce`` (mean of the domains' risks), ``penalty`` (mean distance over the
domain pairs), ``total``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._amp import no_autocast
from egl._check import check_positive, check_shape, fail
from egl.explainers.base import check_target_range
from egl.recipes._domains import global_groups, group_keys, require_domains
from egl.recipes._features import classifier_head, logits_and_features
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["CORAL", "MMD", "coral", "mmd", "coral_distance", "mmd_distances", "MMD_GAMMAS"]

#: DomainBed's Gaussian kernel widths (γ in exp(−γ d²)).
MMD_GAMMAS = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


def coral_distance(a: Tensor, b: Tensor) -> Tensor:
    """CORAL distance of two feature sets: ``mean((μ_a − μ_b)²) + mean((C_a − C_b)²)``.

    Shape:
        a: ``N D``, b: ``M D`` with ``N, M >= 2``; returns a 0-d tensor.
    """
    fn = "egl.recipes.coral_distance"
    for arg, t in (("a", a), ("b", b)):
        check_shape(t, "N D", fn, arg)
        if t.shape[0] < 2:
            raise fail(fn, arg, "at least 2 feature vectors (a covariance needs two)", f"{t.shape[0]}",
                       "Give each domain at least 2 samples")
    if a.shape[1] != b.shape[1]:
        raise fail(fn, "b", f"{a.shape[1]} features per row, as 'a'", f"{b.shape[1]}", "Pass features of one layer")
    with _full_precision(a):
        a, b = _at_least_float32(a), _at_least_float32(b)
        return _coral(*_moments(a), *_moments(b))


def _at_least_float32(t: Tensor) -> Tensor:
    return t.to(dtype=torch.promote_types(t.dtype, torch.float32))


def _full_precision(t: Tensor) -> Any:
    """Autocast off on ``t``'s device: a covariance or a kernel's block sums in float16 overflow
    (features of scale 100 square to 1e4 and sum over the batch), in bfloat16 they lose digits."""
    return no_autocast(t.device.type)


def _moments(x: Tensor) -> tuple[Tensor, Tensor]:
    mean = x.mean(0, keepdim=True)
    centred = x - mean
    return mean, centred.T @ centred / (x.shape[0] - 1)


def _coral(mean_a: Tensor, cov_a: Tensor, mean_b: Tensor, cov_b: Tensor) -> Tensor:
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


def mmd_distances(feats: Tensor, groups: Sequence[Tensor], gammas: Sequence[float] = MMD_GAMMAS) -> Tensor:
    """MMD of every pair of groups of ``feats``, from one Gaussian-kernel matrix.

    Args:
        feats: the features of the batch.
        groups: index tensors, one per group.
        gammas: the kernels' γ (``exp(−γ |u − v|²)``, summed).

    Shape:
        feats: ``B D``; returns ``G G`` (entry ``[i, j]``: the MMD of groups ``i`` and ``j``; 0 on the diagonal).
    """
    fn = "egl.recipes.mmd_distances"
    check_shape(feats, "B D", fn, "feats")
    bad = [i for i, g in enumerate(groups) if not isinstance(g, Tensor) or g.dim() != 1 or g.numel() == 0
           or g.is_floating_point()]
    if bad:
        raise fail(fn, "groups", "non-empty 1-D integer index tensors, one per group",
                   f"{len(bad)} other entries (first at position {bad[0]})",
                   "Pass e.g. [torch.arange(4), torch.arange(4, 8)]")
    with _full_precision(feats):
        feats = _at_least_float32(feats)
        # Differences, not |u|² + |v|² − 2 u·v (DomainBed's): with γ up to 1000 the expansion's
        # float32 cancellation moved near-zero distances' kernels by percents.
        dist = torch.cdist(feats, feats, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
        kernel = sum(torch.exp(-g * dist) for g in gammas)
        member = torch.zeros(len(groups), feats.shape[0], dtype=feats.dtype, device=feats.device)
        for i, g in enumerate(groups):
            member[i, g] = 1.0 / g.numel()
        block = member @ kernel @ member.T  # [i, j]: mean kernel between groups i and j
        diag = block.diagonal()
        return diag[:, None] + diag[None, :] - 2 * block


class CORAL(Recipe):
    """CORAL (DomainBed's) on any classifier: per-domain feature means and covariances matched.

    Args:
        model: the classifier.
        penalty_weight: weight of the mean pairwise distance (1, DomainBed's ``mmd_gamma``).
        classifier: name of the module whose input are the features (default: the model's
            ``get_classifier()``, timm's head).
        lr, weight_decay, optimizer: the classifier's optimiser (5e-5, 0, ``"adam"``; see
            :mod:`egl.recipes.optimizer`).

    Example:
        >>> import timm, torch
        >>> from egl import recipes
        >>> recipe = recipes.coral(timm.create_model("test_resnet", num_classes=3))
        >>> batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 1]))
        >>> sorted(recipe.compute_phase("classifier", batch, 0))
        ['ce', 'penalty', 'total']
    """

    name = "coral"
    needs_domains = True

    @property
    def compares_domains(self) -> bool:
        return True

    def __init__(self, model: nn.Module, *, penalty_weight: float = 1.0, classifier: str | None = None,
                 lr: float = 5e-5, weight_decay: float = 0.0, optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        fn = f"egl.recipes.{self.name}"
        self.penalty_weight = check_positive(penalty_weight, fn, "penalty_weight")
        self.classifier = classifier
        classifier_head(model, classifier, fn)  # (refuse a model without one now, not at the first step)

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def pair_distances(self, feats: Tensor, groups: Sequence[Tensor]) -> Tensor:
        """Distances of the pairs ``(i, j)``, ``i < j``, of ``groups`` of ``feats``, in row-major order
        (``G (G - 1) / 2`` values)."""
        with _full_precision(feats):
            feats = _at_least_float32(feats)
            moments = [_moments(feats[g]) for g in groups]
            return torch.stack([_coral(*moments[i], *moments[j])
                                for i in range(len(groups)) for j in range(i + 1, len(groups))])

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        from egl.train.global_batch import before_gather  # lazy: egl.train imports the recipes

        fn = f"egl.recipes.{self.name}"
        self.model.train(self.training)
        with before_gather(batch.x.device):
            require_domains(batch, fn, type(self).__name__)
            keys = group_keys(batch, "domain", fn, type(self).__name__)
            head = classifier_head(self.model, self.classifier, fn)
            logits, feats = logits_and_features(lambda: self._logits(batch.x), head, fn)
            check_target_range(batch.y, logits.shape[1], fn)
        per = F.cross_entropy(logits, batch.y, reduction="none")
        per = per.to(dtype=torch.promote_types(per.dtype, torch.float32))
        groups, (per, feats) = global_groups(keys, per, feats, fn=fn)
        ce = torch.stack([per[g].mean() for g in groups]).mean()
        sized = [g for g in groups if g.numel() >= 2]
        if len(sized) >= 2:
            penalty = self.pair_distances(feats, sized).mean()
        else:
            penalty = ce.new_zeros(())
        return {"ce": ce, "penalty": penalty, "total": ce + self.penalty_weight * penalty}


class MMD(CORAL):
    """MMD (DomainBed's) on any classifier: per-domain feature distributions matched under a
    sum of Gaussian kernels.

    Args:
        model, penalty_weight, classifier, lr, weight_decay, optimizer: as :class:`CORAL`.
        gammas: the Gaussian kernels' γ (DomainBed's seven, :data:`MMD_GAMMAS`).

    Example:
        >>> import timm, torch
        >>> from egl import recipes
        >>> recipe = recipes.mmd(timm.create_model("test_resnet", num_classes=3))
        >>> batch = (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 0, 1, 1]))
        >>> sorted(recipe.compute_phase("classifier", batch, 0))
        ['ce', 'penalty', 'total']
    """

    name = "mmd"

    def __init__(self, model: nn.Module, *, penalty_weight: float = 1.0, classifier: str | None = None,
                 gammas: Sequence[float] = MMD_GAMMAS, lr: float = 5e-5, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, penalty_weight=penalty_weight, classifier=classifier, lr=lr,
                         weight_decay=weight_decay, optimizer=optimizer)
        ok = isinstance(gammas, (list, tuple)) and len(gammas) > 0
        ok = ok and all(isinstance(g, (int, float)) and not isinstance(g, bool) and 0 < g < float("inf")
                        for g in gammas)
        if not ok:
            raise fail("egl.recipes.mmd", "gammas", "a non-empty list of finite positive kernel widths",
                       repr(gammas)[:200], "Pass e.g. gammas=[0.1, 1.0, 10.0], or leave DomainBed's default")
        self.gammas = tuple(float(g) for g in gammas)

    def pair_distances(self, feats: Tensor, groups: Sequence[Tensor]) -> Tensor:
        dist = mmd_distances(feats, groups, self.gammas)
        upper = torch.triu_indices(len(groups), len(groups), offset=1, device=dist.device)
        return dist[upper[0], upper[1]]


@builds(CORAL)
def coral(model: nn.Module, **kwargs: Any) -> CORAL:
    """Build a :class:`CORAL` recipe (batches must carry domains: ``(x, y, domain)``)."""
    return CORAL(model, **kwargs)


@builds(MMD)
def mmd(model: nn.Module, **kwargs: Any) -> MMD:
    """Build an :class:`MMD` recipe (batches must carry domains: ``(x, y, domain)``)."""
    return MMD(model, **kwargs)
