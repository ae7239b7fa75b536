"""Validation during :func:`egl.train.fit`, and model selection by it.

DomainBed (Gulrajani & Lopez-Paz, ICLR 2021) selects a run's model by *training-domain
validation*: accuracy on a held-out split of the training domains, measured every so many
steps. :class:`Validation` measures that accuracy (and the mean cross-entropy) on a loader
every ``every`` steps and after the last one, logs it as ``val/acc`` / ``val/loss`` in the
step's row, and with ``select="acc"`` gives the recipe back, at the end of ``fit``, the
parameters and buffers it had at its most accurate evaluation. ``select="worst_group"`` selects
by the validation split's worst-group accuracy instead (Sagawa et al., ICLR 2020, select their
Waterbirds models so), over (class, shortcut) groups read from the batches' ``shortcut``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from egl._check import check_int, check_logits, check_model_dtype, describe, fail
from egl.errors import EGLError, InputError, UnsupportedModelError
from egl.metrics._common import check_labels
from egl.train import distributed as dist_utils

if TYPE_CHECKING:
    from egl.recipes.base import Recipe

__all__ = ["Validation", "SELECTS"]

SELECTS = ("last", "acc", "worst_group")

FN = "egl.train.Validation"


class Validation:
    """Accuracy of ``recipe.model`` on validation batches during training; optional selection.

    Args:
        loader: validation batches (``(x, y)``, ``(x, y, domain)`` or dicts, as for training),
            iterated once per evaluation; under ``torch.distributed`` give each rank its shard
            (the counts are summed over ranks).
        every: steps between evaluations; one also follows the last step. Default ``None``:
            ten evaluations in the run (``max(1, steps // 10)``, set when ``fit`` starts).
        select: ``"last"`` (default: the weights of the last step stay; validation is only
            logged) or ``"acc"``: when ``fit`` ends, the recipe's parameters and buffers (every
            module's: classifier and masker) go back to those of the evaluation with the
            highest accuracy, the earliest of equals (DomainBed's training-domain validation
            selects the same way). Parameters with ``requires_grad=False`` (a SAM masker) are
            not copied: no optimizer moves them. The optimizers keep their last state.
            ``"worst_group"``: the same, by the lowest accuracy over the (class, shortcut)
            groups of the validation split (batches must be dicts with ``shortcut``, as the
            synthetic data and :class:`egl.data.ImageCSV` with a shortcut column give them),
            equals told apart by accuracy (a worst group of a few images sits at 0 for many
            measurements); each record then has ``worst_group`` too, logged as
            ``val/worst_group``.
        min_group_size: with ``"worst_group"``, groups of fewer validation images are left
            out (default 1: every group counts; an evaluation with no group that large is an
            error naming this argument).

    The model is evaluated in eval mode under ``torch.no_grad`` and the run's autocast, then
    every module gets its mode back; torch's global random state is left as it was (a
    DataLoader draws its seed from it), so a run trains the same with or without validation.
    With ``checkpoint_dir`` the records and the best state so far are saved in the checkpoint,
    so a resumed run selects over all of its evaluations.

    After ``fit``: :attr:`records` (``{"step", "acc", "loss"}`` per evaluation, ``step`` as in
    the log's rows: 0-based, the weights after that step), :attr:`best`
    (the most accurate, or with ``"worst_group"`` the best worst group, whatever else) and
    :attr:`selected` (the one whose weights the recipe has).

    Example:
        >>> # val = Validation(val_loader, every=100, select="acc")
        >>> # recipe.fit(train_loader, steps=5000, validation=val); val.best["step"], val.best["acc"]
    """

    def __init__(self, loader: Iterable[Any], every: int | None = None, select: str = "last", *,
                 min_group_size: int = 1) -> None:
        if isinstance(loader, (str, bytes)) or not isinstance(loader, Iterable):
            raise fail(FN, "loader", "an iterable of validation batches (e.g. a DataLoader)",
                       type(loader).__name__, "Pass a DataLoader over the validation split")
        check_int(every, FN, "every", low=1, or_none=True, note="(ten evaluations in the run)",
                  fix="Pass a number of steps, e.g. every=100")
        if select not in SELECTS:
            raise fail(FN, "select", "'last', 'acc' or 'worst_group'", repr(select),
                       "Pass select='acc' to keep the most accurate weights, 'last' to keep the final ones")
        self.min_group_size = check_int(min_group_size, FN, "min_group_size", low=1,
                                        note="(validation images a group needs to count)",
                                        fix="Pass e.g. min_group_size=10")
        self.loader = loader
        self.every = every
        self.select = select
        #: The record's key that :attr:`best` maximises.
        self.metric = "worst_group" if select == "worst_group" else "acc"
        self.records: list[dict[str, float]] = []
        self._best_state: dict[str, torch.Tensor] | None = None
        self._frozen_versions: dict[str, tuple[torch.Tensor, int]] = {}

    @property
    def best(self) -> dict[str, float] | None:
        """The evaluation with the highest :attr:`metric` so far (the earliest of equals; with
        ``"worst_group"``, equals are told apart by accuracy first); ``None`` before any."""
        best = None
        for r in self.records:
            if best is None or self._key(r) > self._key(best):
                best = r
        return best

    def _key(self, record: dict[str, float]) -> tuple[float, ...]:
        """What :attr:`best` maximises. A worst group of a few validation images sits at 0 for
        many measurements: ties then go to the more accurate one (the earliest of equals kept the
        untrained model of the first measurement)."""
        return (record["worst_group"], record["acc"]) if self.metric == "worst_group" else (record["acc"],)

    @property
    def selected(self) -> dict[str, float] | None:
        """The evaluation whose weights the recipe ends with: :attr:`best` with ``select="acc"``
        or ``"worst_group"``, the last one with ``select="last"``; ``None`` before any."""
        if self.select != "last":
            return self.best
        return self.records[-1] if self.records else None

    def due(self, done: int, steps: int) -> bool:
        """Whether to evaluate after ``done`` of ``steps`` steps."""
        every = self.every if self.every is not None else max(1, steps // 10)
        return done % every == 0 or done == steps

    @torch.no_grad()
    def run(self, recipe: "Recipe", done: int, device: torch.device,
            autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
            memory_format: torch.memory_format = torch.contiguous_format) -> dict[str, float]:
        """Evaluate ``recipe.model`` now, after ``done`` steps; returns ``{"val/acc", "val/loss"}``.

        The record's ``step`` is that of the log row it joins (``done - 1``: rows count from 0),
        so ``{"step": 399}`` holds the weights after the 400th step."""
        from egl.recipes.base import Recipe
        from egl.recipes.batch import as_batch

        if not isinstance(recipe, Recipe):  # (a bare model: an AttributeError on .model)
            got = f"a {type(recipe).__name__} module" if isinstance(recipe, torch.nn.Module) else describe(recipe)
            raise fail(f"{FN}.run", "recipe", "an egl recipe (its model is evaluated)", got,
                       "Pass the recipe that fit trains, e.g. validation.run(recipe, done, device), or "
                       "egl.recipes.erm(model) to wrap a bare model")
        model = recipe.model
        modes = [(m, m.training) for m in model.modules()]
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # correct, count, summed cross-entropy
        groups: torch.Tensor | None = None  # per (class, shortcut) group: correct, count
        error: EGLError | None = None
        try:  # a DataLoader draws its base seed from torch's global RNG: the training's draws stay as they were
            model.eval()
            with torch.random.fork_rng(devices=[]):
                for raw in self.loader:
                    batch = as_batch(raw, FN).to(device)
                    x = batch.x.contiguous(memory_format=memory_format)
                    with autocast():
                        check_model_dtype(model, x, FN, "loader's images")  # (float64: a raw error in a layer)
                        logits = model(x)
                    logits = check_logits(logits, x.shape[0], FN).float()
                    y = check_labels(batch.y, logits, logits.shape[1], FN, "loader's labels")
                    sums[0] += (logits.argmax(1) == y).sum()
                    sums[1] += y.numel()
                    sums[2] += F.cross_entropy(logits, y, reduction="sum")
                    if self.metric == "worst_group":
                        groups = self._count_groups(groups, batch, logits, y)
        except (InputError, UnsupportedModelError) as exc:  # every rank learns of it before the all-reduce
            error = exc
        finally:
            for m, was_training in modes:
                m.training = was_training
        if dist_utils.is_distributed():
            failed, _ = dist_utils.first_failure(1 if error is not None else 0, device)
            if error is None and failed >= 0:
                raise fail(FN, "loader", "validation batches that pass every check on every rank",
                           f"a failed check on rank {failed} after step {done - 1}",
                           f"See rank {failed}'s error, which names the argument")
            if error is None:
                torch.distributed.all_reduce(sums)
        if error is not None:
            raise error
        correct, count, loss = sums.tolist()
        if count == 0:
            raise fail(FN, "loader", "at least one validation batch", "an empty loader",
                       "Pass a loader over a non-empty validation split")
        record = {"step": done - 1, "acc": correct / count, "loss": loss / count}  # the log row's step
        if self.metric == "worst_group":
            record["worst_group"] = self._worst_group(groups, done)
        improved = self.best is None or self._key(record) > self._key(self.best)
        self.records.append(record)
        if improved and self.select != "last":
            self._keep(recipe)
        return {f"val/{k}": v for k, v in record.items() if k != "step"}

    def _count_groups(self, groups: torch.Tensor | None, batch: Any, logits: torch.Tensor,
                      y: torch.Tensor) -> torch.Tensor:
        """``groups`` (``[2, K (K + 1)]``: correct, count per (class, shortcut) group) with this batch added."""
        k = logits.shape[1]
        if batch.shortcut is None:
            raise fail(FN, "loader", "dict batches with key 'shortcut' (select='worst_group' groups the validation "
                       "images by (class, shortcut))", "a batch without shortcut labels",
                       "Use data whose items carry 'shortcut' (the synthetic benchmark, egl.data.ImageCSV with a "
                       "shortcut column), or select='acc'")
        s = batch.shortcut
        if s.numel() and not -1 <= int(s.min()) <= int(s.max()) < k:  # (validation: a host read is fine)
            raise fail(FN, "loader's shortcut labels", f"class indices in [0, {k - 1}], or -1 for none",
                       f"values in [{int(s.min())}, {int(s.max())}]", "Give the class the spurious feature stands for")
        if groups is None:
            groups = torch.zeros(2, k * (k + 1), dtype=torch.float64, device=logits.device)
        ids = y * (k + 1) + (s + 1)
        groups[0].index_add_(0, ids, (logits.argmax(1) == y).to(torch.float64))
        groups[1].index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
        return groups

    def _worst_group(self, groups: torch.Tensor | None, done: int) -> float:
        """The lowest accuracy over the groups of at least ``min_group_size`` images (every rank's)."""
        mine = {} if groups is None else {g: (c, n) for g, (c, n) in enumerate(zip(*groups.tolist())) if n > 0}
        merged: dict[int, list[float]] = {}
        for part in dist_utils.all_gather_object(mine) if dist_utils.is_distributed() else [mine]:
            for g, (c, n) in part.items():
                merged.setdefault(g, [0.0, 0.0])
                merged[g][0] += c
                merged[g][1] += n
        kept = [c / n for c, n in merged.values() if n >= self.min_group_size]
        if not kept:
            largest = int(max((n for _, n in merged.values()), default=0))
            raise fail(FN, "min_group_size", "at most the size of some validation group (select='worst_group')",
                       f"{self.min_group_size}; the largest of {len(merged)} groups has {largest} images "
                       f"(after step {done - 1})", f"Pass min_group_size={max(largest, 1)} or lower, or validate on "
                       "more images")
        return min(kept)

    def _keep(self, recipe: "Recipe") -> None:
        """Copy what training can change: trainable parameters and buffers (a frozen SAM masker's
        weights, hundreds of MB, are not copied); into the same tensors after the first time."""
        frozen = {n: p for n, p in recipe.named_parameters(remove_duplicate=False) if not p.requires_grad}
        self._frozen_versions = {n: (p, p._version) for n, p in frozen.items()}
        state = {k: v for k, v in recipe.state_dict().items() if k not in frozen}
        if self._best_state is not None and self._best_state.keys() == state.keys() and all(
                self._best_state[k].shape == v.shape and self._best_state[k].dtype == v.dtype
                for k, v in state.items()):
            for k, v in state.items():
                self._best_state[k].copy_(v)
        else:
            self._best_state = {k: v.detach().clone() for k, v in state.items()}

    def finish(self, recipe: "Recipe") -> dict[str, float] | None:
        """With ``select="acc"`` or ``"worst_group"``, load the best evaluation's state into ``recipe``;
        returns :attr:`selected`."""
        if self.select != "last" and self._best_state is not None:
            recipe.load_state_dict(self._best_state, strict=False)  # (frozen parameters were not kept)
            moved = [n for n, (p, version) in self._frozen_versions.items() if p._version != version]
            if moved:
                warnings.warn(f"{FN}: {len(moved)} parameters (e.g. {moved[0]}) were frozen (requires_grad=False) "
                              "at the selected step and changed after it: they keep their last values. Unfreeze "
                              "them before training, or select with select='last'.", stacklevel=3)
        return self.selected

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: the records and, with ``select="acc"`` or ``"worst_group"``, the best state."""
        return {"records": [dict(r) for r in self.records], "best_state": self._best_state, "metric": self.metric}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        records = [dict(r) for r in state.get("records", [])]
        best_state = state.get("best_state")
        metric = state.get("metric", "acc")  # (checkpoints before select='worst_group' selected by accuracy)
        if self.select != "last" and records and best_state is None:
            warnings.warn(f"{FN}: the checkpoint's {len(records)} evaluations were made with select='last', "
                          "which keeps no weights: selection starts afresh from this step.", stacklevel=3)
            records = []
        elif self.select != "last" and records and metric != self.metric:
            warnings.warn(f"{FN}: the checkpoint's {len(records)} evaluations selected by '{metric}', this run by "
                          f"'{self.metric}' (select={self.select!r}): selection starts afresh from this step.",
                          stacklevel=3)
            records, best_state = [], None
        self.records = records
        self._best_state = best_state if self.select != "last" else None
