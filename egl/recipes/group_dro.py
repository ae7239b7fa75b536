"""Group distributionally robust optimisation (Sagawa et al., "Distributionally Robust Neural
Networks for Group Shifts", ICLR 2020; the online algorithm of their Algorithm 1, as DomainBed's
``algorithms.GroupDRO`` implements it for domains).

A weight ``q_g`` per group, kept across steps; each step, with ``L_g`` the mean cross-entropy of
the batch's samples in group ``g``::

    q_g <- q_g · exp(η · L_g)  for every group in the batch, then q normalised
    L   = Σ_g q_g L_g / Σ_g q_g   over the groups in the batch

so the loss leans towards the groups the model does worst on (the worst-group risk, online).

Groups (``groups=``):

* ``"domain"`` (default, DomainBed): one group per domain label (``(x, y, domain)`` batches).
* ``"class"``: one group per class (no extra labels).
* ``"domain_class"``: one per (domain, class) pair.
* ``"shortcut"``: one per (class, shortcut) pair, the shortcut being the class a spurious
  feature of the image stands for (dict batches with key ``shortcut``, -1 for none; the
  synthetic benchmark and :class:`egl.data.ImageCSV` with a shortcut column carry it). This is
  Sagawa et al.'s grouping on Waterbirds: (bird, place).

Choices (arguments where they matter):

* ``eta=0.01``: DomainBed's ``groupdro_eta`` and Sagawa et al.'s robust step size.
* Batches are drawn as they come (not one mini-batch per group, as DomainBed draws one per
  domain): a group absent from a batch keeps its weight that step (without the adjustment,
  below) and takes no part in the loss, which is normalised over the groups present (so the
  loss keeps a cross-entropy's scale whatever the batch holds). Sagawa et al.'s code leaves
  absent groups out of the sum without renormalising; over many steps an absent group's weight
  falls relative to the others' (as in their code), and a group first seen late starts from
  that lower weight.
* The weights are kept as ``log q`` (a buffer of ``max_groups`` entries, 1024 by default,
  checkpointed): updates add ``η L_g`` and subtract the log-sum-exp, so a long run neither
  overflows nor underflows. Group ids must fit in ``max_groups`` (checked, naming it).
* Sagawa et al.'s generalisation adjustment (their Section 3.3): with ``adjustment=C > 0``
  the weights' update reads ``L_g + C / sqrt(n_g)`` instead of ``L_g``, ``n_g`` being group
  ``g``'s size in the training set, so small groups (whose training loss understates their
  test loss) gain weight. As in their code every training group's weight takes its
  ``C / sqrt(n_g)`` at every step, in the batch or not (an absent group's loss counts as 0),
  and the loss's gradient is that of ``Σ_g q_g L_g`` (their logged loss also adds the constant
  ``Σ_g q_g C / sqrt(n_g)``; ours does not). The sizes
  come from the data: ``recipe.set_group_sizes(train_set)`` before training (``egl
  experiment`` calls it); a step without them, or with a group the sizes do not hold, is
  refused by name. ``adjustment=0`` (default: DomainBed's, which has none); Sagawa et al.
  tune C over {0, 1, 2, 3, 4, 5} (their Waterbirds choice: 2). Their strong weight decay is
  the recipe's ``weight_decay=`` (with ``optimizer="sgd"``: their setting, 1.0 on Waterbirds).
* Under ``torch.distributed`` the group sums and counts are all-reduced (one collective of
  ``2 · max_groups`` values), so every rank updates the same weights from the global batch and
  the ranks' averaged gradients are those of the global batch's loss.
* The weights change only while the recipe is training (``compute_phase`` under ``eval()``
  reads them), and a step refused by a failed check, a non-finite loss or a float16 overflow
  leaves them as they were (the recipe's ``step_buffers``). Logged terms: ``ce`` (the
  batch's plain mean), ``worst_group`` (the largest ``L_g`` of the batch, no gradient) and
  ``total``. Under ``torch.distributed`` the log holds rank 0's values: ``worst_group`` is the
  global batch's, ``ce`` rank 0's images' mean and ``total`` rank 0's share of the global loss
  times the number of ranks (what its backward takes); and every call of the phase, in
  ``eval()`` too, takes part in the all-reduce, so every rank must call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from egl._check import check_choice, check_int, check_positive, check_range, fail
from egl._deferred import active
from egl.data.group_balance import GROUPINGS  # (the groupings the sampler balances)
from egl.errors import InputError
from egl.explainers.base import check_target_range
from egl.recipes._domains import require_domains
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["GroupDRO", "group_dro", "GROUPINGS"]

FN = "egl.recipes.group_dro"


class GroupDRO(Recipe):
    """GroupDRO on any classifier: cross-entropy reweighted online towards the worst group.

    Args:
        model: the classifier.
        groups: what a group is: ``"domain"`` (default, DomainBed), ``"class"``,
            ``"domain_class"`` or ``"shortcut"`` ((class, shortcut) pairs, Sagawa et al.'s
            Waterbirds groups); see the module docstring.
        eta: step size of the group weights (0.01).
        adjustment: Sagawa et al.'s generalisation adjustment ``C`` (0: none); needs
            :meth:`set_group_sizes`.
        max_groups: how many group weights are kept (1024): group ids must be below it.
        lr, weight_decay, optimizer: the classifier's optimiser (5e-5, 0, ``"adam"``; see
            :mod:`egl.recipes.optimizer`: ``"adamw"`` decouples the decay).

    Example:
        >>> import timm, torch
        >>> from egl import recipes
        >>> recipe = recipes.group_dro(timm.create_model("test_resnet", num_classes=3), groups="class")
        >>> terms = recipe.compute_phase("classifier", (torch.randn(4, 3, 32, 32), torch.tensor([0, 2, 2, 1])), 0)
        >>> sorted(terms)
        ['ce', 'total', 'worst_group']
    """

    name = "group_dro"
    step_buffers = ("log_q",)  # a refused or skipped step leaves the group weights as they were

    @property
    def compares_domains(self) -> bool:
        return self.groups == "domain"

    def __init__(self, model: nn.Module, *, groups: str = "domain", eta: float = 0.01, adjustment: float = 0.0,
                 max_groups: int = 1024, lr: float = 5e-5, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        check_choice(groups, GROUPINGS, FN, "groups")
        self.groups = groups
        self.eta = check_positive(eta, FN, "eta")
        self.adjustment = check_positive(adjustment, FN, "adjustment")
        self.max_groups = check_int(max_groups, FN, "max_groups", low=1, fix="Pass e.g. max_groups=1024")
        self.log_q: Tensor
        self.register_buffer("log_q", torch.zeros(self.max_groups))
        # training-set group sizes by group id (0: not in it), from the data: not checkpointed
        self.group_sizes: Tensor
        self.register_buffer("group_sizes", torch.zeros(self.max_groups), persistent=False)
        self._sizes_classes: int | None = None  # the number of classes the ids were counted with

    @property
    def needs_domains(self) -> bool:  # type: ignore[override]
        """Whether batches must carry domain labels (``groups="domain"`` or ``"domain_class"``):
        per instance (read it on a recipe, not on the class, where it is the property object)."""
        return self.groups in ("domain", "domain_class")

    def set_group_sizes(self, dataset: Dataset, num_classes: int | None = None) -> Tensor:
        """Count each group's training images in ``dataset`` (for ``adjustment``); returns the sizes
        by group id.

        Args:
            dataset: the training data, a map-style data set of dict items with the labels the
                grouping needs (read as :func:`egl.data.item_labels` reads them: without loading
                images from egl's data sets).
            num_classes: the classifier's number of classes (group ids of ``"class"``,
                ``"domain_class"`` and ``"shortcut"`` depend on it); default ``model.num_classes``
                (timm models have it); not needed with ``groups="domain"``.

        Raises:
            InputError: no ``num_classes`` known, labels out of range, or more groups than
                ``max_groups``.
        """
        from egl.data.group_balance import item_labels

        k = num_classes if num_classes is not None else getattr(self.model, "num_classes", None)
        if self.groups == "domain" and k is None:
            k = 1  # (domain ids do not depend on the classes)
        k = check_int(k, f"{FN}.set_group_sizes", "num_classes", low=1,
                      fix="Pass num_classes=K (the classifier's number of classes)")
        fn = f"{FN}.set_group_sizes"
        fits = {"class": k, "shortcut": k * (k + 1), "domain_class": k, "domain": 1}[self.groups]
        self._check_fits(fits, f"the groups of {k} classes", fn)
        cols = item_labels(dataset, self.groups, who=(fn, "groups"))
        y = cols.get("label")
        if y is not None:
            check_range(y, 0, k - 1, fn, "dataset", f"Check the data set's labels: classes are 0 .. {k - 1}")
        if self.groups == "shortcut":
            check_range(cols["shortcut"], -1, k - 1, fn, "dataset",
                        f"Check the data set's shortcut labels: a class index in [0, {k - 1}], or -1 for none")
        if "domain" in cols:
            per = self.max_groups // k if self.groups == "domain_class" else self.max_groups
            check_range(cols["domain"], 0, per - 1, fn, "dataset",
                        f"Check the data set's domains: raise max_groups (now {self.max_groups}) or renumber "
                        "the domains from 0")
        ids = self._ids(y, cols.get("domain"), cols.get("shortcut"), k)
        sizes = torch.bincount(ids, minlength=self.max_groups).to(self.group_sizes)
        self.group_sizes.copy_(sizes)
        self._sizes_classes = k
        return sizes

    @property
    def weights(self) -> Tensor:
        """The group weights ``q`` (summing to 1 over all ``max_groups`` entries; index = group id)."""
        return self.log_q.softmax(0)

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def group_ids(self, batch: Batch, num_classes: int) -> Tensor:
        """Each sample's group id (see the module docstring), checked to fit in ``max_groups``
        (values checked with the step's deferred checks; ids clamped meanwhile)."""
        y, g, k = batch.y, self.max_groups, num_classes
        fix = f"Raise max_groups (now {g}) or renumber them from 0"
        d = s = None
        if self.groups == "class":
            self._check_fits(k, "classes")
        elif self.groups == "shortcut":
            if batch.shortcut is None:
                raise fail(FN, "batch", "dict batches with key 'shortcut' (groups='shortcut')",
                           "a batch without shortcut labels", "Use data whose items carry 'shortcut' (the synthetic "
                           "benchmark, egl.data.ImageCSV with a shortcut column), or groups='domain'")
            self._check_fits(k * (k + 1), f"(class, shortcut) pairs for {k} classes")
            s = check_range(batch.shortcut, -1, k - 1, FN, "batch shortcut",
                            f"Give a class index in [0, {k - 1}], or -1 for none")
        else:
            d = require_domains(batch, FN, "GroupDRO with groups='domain' or 'domain_class'")
            if self.groups == "domain":
                check_range(d, 0, g - 1, FN, "batch domain", fix)
            else:
                self._check_fits(k, "classes")
                check_range(d, 0, g // k - 1, FN, "batch domain",
                            f"{fix} (groups='domain_class' keeps {k} per domain)")
        return self._ids(y, d, s, k)

    def _ids(self, y: Tensor | None, d: Tensor | None, s: Tensor | None, k: int) -> Tensor:
        """Group ids from the labels (checked by the caller; clamped here so that a value whose
        check is still queued cannot index out of range)."""
        if self.groups == "class":
            return y  # type: ignore[return-value]
        if self.groups == "shortcut":
            return y * (k + 1) + (s.clamp(-1, k - 1) + 1)  # type: ignore[operator, union-attr]
        if self.groups == "domain":
            return d.clamp(0, self.max_groups - 1)  # type: ignore[union-attr]
        return d.clamp(0, self.max_groups // k - 1) * k + y  # type: ignore[union-attr, operator]

    def _check_fits(self, n: int, what: str, fn: str = FN) -> None:
        if n > self.max_groups:
            raise fail(fn, "max_groups", f"at least {n} ({what})", str(self.max_groups), f"Pass max_groups={n}")

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        from egl.train.distributed import is_distributed, world_size

        self.model.train(self.training)
        try:
            logits = self._logits(batch.x)
            y = check_target_range(batch.y, logits.shape[1], FN)
            per = F.cross_entropy(logits, y, reduction="none")
            per = per.to(dtype=torch.promote_types(per.dtype, torch.float32))  # (half logits: sums in float32)
            ids = self.group_ids(batch, logits.shape[1])
        except InputError:  # the other ranks wait in the all-reduce below: join it, then raise (the step's
            if is_distributed():  # failure protocol then tells them, egl.recipes.Recipe.training_step)
                import torch.distributed as dist

                dist.all_reduce(torch.zeros(2, self.max_groups, dtype=torch.float64, device=batch.x.device))
            raise
        sums = per.new_zeros(self.max_groups).index_add(0, ids, per)
        counts = per.new_zeros(self.max_groups).index_add(0, ids, torch.ones_like(per))
        stats = torch.stack([sums.detach(), counts])
        world = 1
        if is_distributed():
            import torch.distributed as dist

            stats = stats.to(dtype=torch.float64)  # (one dtype on every rank, as the failing rank's zeros)
            dist.all_reduce(stats)  # every rank: the global batch's group sums and counts
            world = world_size()
        present = stats[1] > 0
        means = stats[0] / stats[1].clamp(min=1.0)
        if self.training:
            with torch.no_grad():
                update = torch.where(present, self.eta * means, 0.0)
                if self.adjustment > 0:  # every training group, in the batch or not (Sagawa et al.'s code)
                    update = update + self.eta * self._adjustments(present, logits.shape[1])
                self.log_q.add_(update.to(self.log_q.dtype))
                self.log_q.sub_(self.log_q.logsumexp(0))
        w = self.log_q.detach().masked_fill(~present, float("-inf")).softmax(0).to(per.dtype)
        total = world * (w * sums / stats[1].clamp(min=1.0).to(per.dtype)).sum()
        worst = torch.where(present, means, float("-inf")).max().to(per.dtype)
        return {"ce": per.mean(), "worst_group": worst, "total": total}

    def _adjustments(self, present: Tensor, num_classes: int) -> Tensor:
        """``C / sqrt(n_g)`` by group id (0 for a group of no training image); a batch's group the
        sizes do not hold is refused by name (with the step's deferred checks: no read here)."""
        if self._sizes_classes is None:
            raise fail(FN, "adjustment", "the training set's group sizes (adjustment > 0 reads them)",
                       "none set", "Call recipe.set_group_sizes(train_set) before training, or adjustment=0")
        if self._sizes_classes != num_classes and self.groups != "domain":
            raise fail(FN, "batch", f"logits of the {self._sizes_classes} classes the group sizes were counted with",
                       f"{num_classes} classes", "Call recipe.set_group_sizes(train_set, num_classes=K) again")
        sizes = self.group_sizes  # (a buffer: on the recipe's device, as the batch)
        unknown = present & (sizes == 0)
        first = torch.where(unknown, torch.arange(self.max_groups, device=present.device), self.max_groups).min()
        stats = torch.stack([unknown.sum(), first]).float()

        def verdict(v: Sequence[float]) -> InputError | None:
            if v[0] == 0:
                return None
            return fail(FN, "batch", "groups that the training set's group sizes hold",
                        f"{int(v[0])} group(s) with no training image counted (first id {int(v[1])})",
                        "Count the sizes on the data you train on: recipe.set_group_sizes(train_set)")

        checks = active()
        if checks is not None:
            checks.add(stats, verdict)
        else:
            err = verdict(stats.tolist())
            if err is not None:
                raise err
        adjust = self.adjustment / sizes.clamp(min=1.0).sqrt().to(torch.float32)
        return torch.where(sizes > 0, adjust, 0.0)  # (a group of no training image: none)


@builds(GroupDRO)
def group_dro(model: nn.Module, **kwargs: Any) -> GroupDRO:
    """Build a :class:`GroupDRO` recipe."""
    return GroupDRO(model, **kwargs)
