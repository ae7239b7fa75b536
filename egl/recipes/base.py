"""The recipe interface: components plus weights, with phases as explicit data.

A recipe owns the classifier (and any other trained module, such as ALIGN's masker).
Each :class:`Phase` names the modules it updates and a function returning named loss
terms (``{"ce": ..., "align": ..., "total": ...}``), so every term can be logged and
ablated. Two ways to drive one:

1. ``recipe.fit(loader, steps=...)`` -- the built-in loop (:func:`egl.train.fit`).
2. Your own loop -- per step, for each of ``recipe.active_phases(step)``::

       terms = recipe.compute_phase(phase.name, batch, step)
       terms["total"].backward(); optimizers[phase.name].step(); optimizers[phase.name].zero_grad()

   ``recipe.phase_parameters(name)`` gives the parameters to optimise.
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from egl._amp import inner_scale
from egl._arguments import readable, record_subclass_arguments, records_arguments
from egl._check import (batch_of_one, check_int, check_logits, check_model_dtype, check_positive, describe,
                        fail)
from egl._deferred import DeferredChecks, deferred_checks
from egl._module_hooks import structure_stamp
from egl.errors import EGLError, RankFailedError
from egl.recipes.batch import Batch, as_batch
from egl.recipes.optimizer import build_optimizer, check_optimizer, describe_optimizer, no_weight_decay_ids
from egl.train.loss_scale import LossScaler

__all__ = ["Phase", "Recipe", "NonFiniteLossError", "frozen"]

# what the ranks exchange after each phase (the highest code wins): gradients overflowed under
# loss scaling (skip the step), an input check failed, a loss term is not finite, another error
# while computing the terms (raise)
_OVERFLOW, _INPUT, _NON_FINITE, _ERROR = 1, 2, 3, 4


class NonFiniteLossError(EGLError, FloatingPointError):
    """A loss term became NaN or infinite; raised before the optimiser step."""


@dataclass(frozen=True)
class Phase:
    """One optimisation phase of a recipe.

    Attributes:
        name: ``"classifier"``, ``"masker"``...; also the key of its optimiser.
        modules: the modules this phase updates; every other module is frozen during it.
        compute: ``(batch, step) -> {term: tensor}``, with a ``"total"`` term to minimise.
        start_step: the phase runs from this step on (ALIGN's masker joins after warm-up).
        every: from ``start_step`` on, the phase runs every ``every`` steps (1: every step).
    """

    name: str
    modules: tuple[nn.Module, ...]
    compute: Callable[[Batch, int], dict[str, Tensor]]
    start_step: int = 0
    every: int = 1

    def __post_init__(self) -> None:
        fn = "egl.recipes.Phase"
        if not isinstance(self.name, str) or not self.name:
            raise fail(fn, "name", "a non-empty str (the phase's optimiser and log key)", describe(self.name),
                       "Name the phase, e.g. Phase('classifier', (model,), compute)")
        if isinstance(self.modules, nn.Module):  # (one module given as it is)
            object.__setattr__(self, "modules", (self.modules,))
        if not isinstance(self.modules, (tuple, list)) or not all(isinstance(m, nn.Module) for m in self.modules):
            raise fail(fn, "modules", "a tuple of the nn.Modules the phase updates", describe(self.modules),
                       f"Pass e.g. Phase({self.name!r}, (self.model,), compute)")
        object.__setattr__(self, "modules", tuple(self.modules))
        check_int(self.every, fn, "every", low=1, fix="Pass every=1 to run the phase at every step")
        if not callable(self.compute):
            raise fail(fn, "compute", "a callable (batch, step) -> {term: 0-d tensor, 'total': ...}",
                       describe(self.compute), "Pass a method such as self._terms")

    def active(self, step: int) -> bool:
        return step >= self.start_step and (step - self.start_step) % self.every == 0

    def parameters(self) -> Iterator[nn.Parameter]:
        for m in self.modules:
            yield from m.parameters()


class frozen:
    """Context: modules in eval mode with ``requires_grad=False``; both restored on exit."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules
        self._saved: list[tuple[nn.Module, bool, list[bool]]] = []

    def __enter__(self) -> "frozen":
        for m in self.modules:
            params = list(m.parameters())
            self._saved.append((m, m.training, [p.requires_grad for p in params]))
            m.eval()
            for p in params:
                p.requires_grad_(False)
        return self

    def __exit__(self, *exc: object) -> None:
        for m, mode, flags in self._saved:
            m.train(mode)
            for p, f in zip(m.parameters(), flags):
                p.requires_grad_(f)
        self._saved.clear()


class _RunningStats:
    """A copy of the normalisation layers' running statistics (and the recipe's ``step_buffers``),
    taken before a phase's forward passes (which update them in training mode) and put back when
    the phase fails or is skipped.

    One preallocated copy per recipe, refreshed with ``torch._foreach_copy_`` (a launch or two
    per phase, on the device, no read): a NaN batch no longer leaves NaN running statistics
    behind the ``NonFiniteLossError`` it raises.
    """

    def __init__(self, bufs: list[Tensor], copies: list[Tensor]) -> None:
        self.bufs, self.copies = bufs, copies

    @classmethod
    def of(cls, recipe: nn.Module) -> _RunningStats:
        stamp = structure_stamp(recipe)  # the module walk only when a submodule changed
        cached = recipe.__dict__.get("_running_stats_modules")
        if cached is None or cached[0] != stamp:
            cached = (stamp, [m for m in recipe.modules() if isinstance(m, nn.modules.batchnorm._NormBase)])
            recipe.__dict__["_running_stats_modules"] = cached
        bufs = [b for m in cached[1] for b in m._buffers.values() if b is not None]  # as they are now (.to())
        bufs += [getattr(recipe, name) for name in getattr(recipe, "step_buffers", ())]
        last, held = recipe.__dict__.get("_running_stats_copy", ([], []))
        if len(last) != len(bufs) or any(a is not b for a, b in zip(last, bufs)):  # new tensors (.to()): new copies
            held = [torch.empty_like(b) for b in bufs]
            recipe.__dict__["_running_stats_copy"] = (bufs, held)
        if bufs:
            with torch.no_grad():
                _copy_all(held, bufs)
        return cls(bufs, held)

    def restore(self) -> None:
        if self.bufs:
            with torch.no_grad():
                _copy_all(self.bufs, self.copies)


def _copy_all(dst: list[Tensor], src: list[Tensor]) -> None:
    if hasattr(torch, "_foreach_copy_"):  # torch >= 2.1: grouped launches
        torch._foreach_copy_(dst, src)
    else:  # pragma: no cover - older torch
        for d, t in zip(dst, src):
            d.copy_(t)


class Recipe(nn.Module):
    """Base class of recipes. Subclasses build ``self.model`` and implement :meth:`phases`.

    Args:
        model: the classifier (any ``nn.Module`` returning logits; timm models work out of the box).
        lr: learning rate of the classifier's default optimiser (Adam, 5e-5: DomainBed's default).
        weight_decay: weight decay of the default optimisers (0, DomainBed's default).
        optimizer: the default optimisers' kind: ``"adam"`` (DomainBed's), ``"adamw"`` (decoupled
            weight decay), ``"sgd"`` (momentum 0.9), or a dict with their options
            (:mod:`egl.recipes.optimizer`).
    """

    name: ClassVar[str] = ""
    needs_domains: ClassVar[bool] = False
    #: Constructor arguments that change how a step is computed (memory, batching), not what it
    #: computes: a resume may change them (with a warning: not bit-exact). Any other argument that
    #: differs from the checkpoint's refuses the resume (:func:`egl.train.fit`).
    resume_free: ClassVar[frozenset[str]] = frozenset()
    #: Names of the recipe's own buffers that a step updates (GroupDRO's group weights): a step
    #: refused by a failed check or a non-finite loss, or skipped for a float16 overflow, leaves
    #: them as they were, as it leaves BatchNorm's running statistics.
    step_buffers: ClassVar[tuple[str, ...]] = ()

    @property
    def compares_domains(self) -> bool:
        """Whether the recipe's extra term compares the batch's domains (CORAL, MMD; V-REx and
        GroupDRO over domains): ``egl experiment`` warns when such a run trains on one domain,
        where the term has nothing to compare. False here; a plugin's recipe may say True."""
        return False

    @property
    def reads_masks(self) -> bool:
        """Whether training reads the batch's masks (``batch.mask``, the data's annotations).
        False here; ALIGN with a masker that ``needs_mask`` (``ground_truth``) and a non-zero
        ``align_weight`` says True. ``egl experiment`` warns when ``data.mask_fraction`` is set
        for a method that does not read them (the fraction changes nothing there)."""
        return False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        record_subclass_arguments(cls)  # constructor arguments, for config()

    def config(self) -> dict[str, Any]:
        """The constructor's arguments, defaults included, in a JSON-friendly readable form.

        Modules become a short description (``"ResNet(test_resnet)"``), other objects their
        ``repr``. :func:`egl.train.fit` writes this in the log's header line.

        Example:
            >>> import timm
            >>> from egl import recipes
            >>> cfg = recipes.erm(timm.create_model("test_resnet", num_classes=3), lr=1e-4).config()
            >>> cfg["model"], cfg["lr"]
            ('ResNet(test_resnet)', 0.0001)
        """
        cfg = {k: readable(v) for k, v in getattr(self, "_init_arguments", {}).items()}
        if "optimizer" in cfg and isinstance(self.__dict__.get("optimizer_spec"), dict):  # "sgd" == {"name": "sgd"}
            cfg["optimizer"] = describe_optimizer(self.__dict__["optimizer_spec"])
        return cfg

    @records_arguments
    def __init__(self, model: nn.Module, *, lr: float = 5e-5, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise fail(f"egl.recipes.{self.name or type(self).__name__}", "model", "a torch.nn.Module classifier",
                       describe(model), "Pass e.g. timm.create_model('resnet18', num_classes=K)")
        fn = f"egl.recipes.{self.name or type(self).__name__}"
        head = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
        if isinstance(head, nn.Identity):  # (num_classes=0 with a head set afterwards: fine, get_classifier says)
            raise fail(fn, "model", "a classifier with a head (its outputs are class logits)",
                       f"{type(model).__name__} whose get_classifier() is Identity (built with num_classes=0: its "
                       "outputs are pooled features)",
                       "Build it with num_classes=K, e.g. timm.create_model(..., num_classes=K), or "
                       "model.reset_classifier(K)")
        self.model = model
        self.lr = check_positive(lr, fn, "lr")  # 0 is allowed (a frozen run); negative or NaN is not
        self.weight_decay = check_positive(weight_decay, fn, "weight_decay")
        self.optimizer_spec = check_optimizer(optimizer, fn)  # the checked form, every option filled in

    # -- phases ---------------------------------------------------------------------------
    def phases(self) -> list[Phase]:  # pragma: no cover - abstract
        raise NotImplementedError

    def active_phases(self, step: int) -> list[Phase]:
        """The phases that run at ``step``, in order."""
        return [p for p in self.phases() if p.active(step)]

    def _phase(self, name: str) -> Phase:
        for p in self.phases():
            if p.name == name:
                return p
        names = [p.name for p in self.phases()]
        raise fail(f"egl.recipes.{self.name}", "phase", f"one of {names}", repr(name), "Use a phase of this recipe")

    def phase_parameters(self, name: str) -> list[nn.Parameter]:
        """Parameters updated by phase ``name``."""
        return list(self._phase(name).parameters())

    def compute_phase(self, name: str, batch: Any, step: int) -> dict[str, Tensor]:
        """Named loss terms of phase ``name`` for ``batch`` at ``step`` (``"total"`` to minimise)."""
        return self._phase(name).compute(as_batch(batch, f"egl.recipes.{self.name}"), step)

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per phase, of the kind ``optimizer`` names (Adam by default), at
        :meth:`phase_lr` (classifier: ``lr``; ALIGN's masker: ``masker_lr``) with ``weight_decay``."""
        phases = self.checked_phases()
        return {p.name: build_optimizer(p.parameters(), self.optimizer_spec, lr=self.phase_lr(p.name),
                                        weight_decay=self.weight_decay, no_decay=no_weight_decay_ids(p.modules))
                for p in phases}

    def checked_phases(self) -> list[Phase]:
        """:meth:`phases`, refused when they cannot train: none, a name twice (one optimiser and
        one log key for two), a phase with no parameter to update; a module outside the recipe
        (its weights are in no checkpoint: a resume would not continue it) warns."""
        fn = f"egl.recipes.{self.name or type(self).__name__}"
        phases = self.phases()
        if not isinstance(phases, list) or not phases or not all(isinstance(p, Phase) for p in phases):
            raise fail(fn, "phases()", "a non-empty list of egl.recipes.Phase", describe(phases),
                       "Return e.g. [Phase('classifier', (self.model,), self._terms)]")
        names = [p.name for p in phases]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise fail(fn, "phases()", "phases of distinct names (each has its own optimiser and log keys)",
                       f"{twice} more than once", "Rename one of them")
        mine = {id(m) for m in self.modules()}
        for p in phases:
            if not any(True for _ in p.parameters()):
                raise fail(fn, "phases()", f"phase '{p.name}' over modules with parameters to update",
                           f"modules {[type(m).__name__ for m in p.modules]} without any",
                           "Give the module parameters, or leave the phase out (a masker with no parameters: "
                           "trainable = False)")
            outside = [type(m).__name__ for m in p.modules if id(m) not in mine]
            if outside and (fn, p.name) not in _WARNED_OUTSIDE:
                _WARNED_OUTSIDE.add((fn, p.name))
                warnings.warn(f"{fn}: phase '{p.name}' updates {outside}, which the recipe does not hold as a "
                              "submodule: its weights are in no state_dict or checkpoint, and a resumed run "
                              "restarts them. Assign it as an attribute of the recipe (self.aux = module).",
                              UserWarning, stacklevel=3)
        return phases

    def check_optimizers(self, optimizers: object, fn: str) -> dict[str, torch.optim.Optimizer]:
        """``optimizers`` unless it is not a dict of one ``torch.optim.Optimizer`` per phase name."""
        names = sorted(p.name for p in self.checked_phases())
        fix = "Pass recipe.configure_optimizers(), or a dict keyed by these phase names"
        if not isinstance(optimizers, dict):
            raise fail(fn, "optimizers", f"a dict of optimisers keyed by phase name {names}", describe(optimizers), fix)
        if sorted(optimizers) != names:
            raise fail(fn, "optimizers", f"one optimiser per phase of {self.name or type(self).__name__}: keys "
                       f"{names}", f"keys {sorted(map(str, optimizers))}", fix)
        bad = {k: type(v).__name__ for k, v in optimizers.items() if not isinstance(v, torch.optim.Optimizer)}
        if bad:
            raise fail(fn, "optimizers", "torch.optim.Optimizer values", f"{bad}", fix)
        for phase in self.phases():  # an optimiser over none of its phase's parameters trains nothing, silently
            mine = {id(p) for p in phase.parameters()}
            held = {id(p) for group in optimizers[phase.name].param_groups for p in group["params"]}
            if mine and not mine & held:
                raise fail(fn, "optimizers", f"the '{phase.name}' optimiser over parameters of that phase's "
                           f"modules ({', '.join(type(m).__name__ for m in phase.modules)})",
                           "one holding none of them (optimisers swapped, or built on another model)", fix)
        return optimizers

    def phase_lr(self, name: str) -> float:
        """Learning rate of phase ``name``'s default optimiser."""
        return self.lr

    def _logits(self, x: Tensor) -> Tensor:
        """``self.model(x)``, checked to be ``[B, num_classes]`` class scores (a tuple or dict output
        is named, not crashed on deep inside a loss)."""
        return check_logits(self.model(x), x.shape[0], f"egl.recipes.{self.name or type(self).__name__}")

    def training_step(self, batch: Any, step: int, optimizers: dict[str, torch.optim.Optimizer], *,
                      scalers: dict[str, LossScaler] | None = None) -> dict[str, float]:
        """Run every active phase once: loss, backward, finiteness check, optimiser step.

        The loss terms are read back once per phase, after the backward is queued, together with
        the phase's value checks (mask and saliency ranges: see :mod:`egl._deferred`).

        Args:
            batch: any layout :func:`egl.recipes.as_batch` reads.
            step: the step number (phases start at their ``start_step``).
            optimizers: one per phase name.
            scalers: float16 loss scaling, one :class:`egl.train.LossScaler` per phase name (what
                ``fit(precision="fp16")`` passes): the backward runs on the scaled loss, the
                gradients are unscaled, and a step whose gradients overflowed is skipped (on
                every rank) and logged with ``"<phase>/skipped": 1``.

        Returns:
            ``{"<phase>/<term>": float}`` for logging (with scalers, also ``"<phase>/loss_scale"``
            and ``"<phase>/skipped"``).

        Raises:
            RankFailedError: under ``torch.distributed``, another rank raised an error that is not an
                input check while computing the phase's terms (this rank stops at the same step).
            InputError: an input check of the phase failed (a mask or saliency map outside [0, 1],
                a label out of range), here or on another rank, before that phase's optimiser step.
            NonFiniteLossError: naming the term and the step, before that phase's optimiser step
                (an earlier phase of the same step, ALIGN's masker phase, has already stepped);
                with ``scalers``, also when gradients stay non-finite with the loss scale below 1
                (a loss made non-finite by an overflowing gradient taken inside it, see
                :mod:`egl._amp`, skips the step as an overflow instead).
        """
        fn = f"egl.recipes.{self.name}"
        b = as_batch(batch, fn)
        check_model_dtype(self.model, b.x, fn, "batch")
        logs: dict[str, float] = {}
        with deferred_checks() as checks, batch_of_one(fn, "batch"):  # value checks: read with the loss terms
            known = b.known_label_range()
            if known is not None:
                checks.note_range(b.y, *known)
            for phase in self.active_phases(step):
                scaler = scalers.get(phase.name) if scalers is not None else None
                logs.update(self._run_phase(phase, b, step, optimizers[phase.name], checks, scaler))
        return logs

    def _run_phase(self, phase: Phase, b: Batch, step: int, opt: torch.optim.Optimizer,
                   checks: DeferredChecks, scaler: LossScaler | None) -> dict[str, float]:
        from egl.train.distributed import first_failure  # lazy: egl.train imports the recipes

        with torch.profiler.record_function(f"egl.phase.{phase.name}"):
            opt.zero_grad(set_to_none=True)
            stats = _RunningStats.of(self)  # a failed or skipped phase leaves them as they were
            try:  # gradients taken inside the loss (saliency) are loss-scaled too (egl._amp)
                with inner_scale(scaler.scale_value if scaler is not None else None) as inner:
                    terms = phase.compute(b, step)
                _check_terms(terms, phase.name, f"egl.recipes.{self.name or type(self).__name__}")
            except Exception as exc:  # an immediate check (labels), or any error: tell the other ranks, raise
                stats.restore()  # (a ValueError: torch's, for a batch of one under BatchNorm, named outside)
                first_failure(_INPUT if isinstance(exc, ValueError) else _ERROR, b.x.device)
                raise
            total = terms["total"]
            (scaler.scale(total) if scaler is not None else total).backward()
            queued = checks.take()
            losses = torch.stack([v.detach().float() for v in terms.values()])
            extra = [s.to(losses.device) for s in queued.stats]  # a no-op unless a check ran elsewhere
            if scaler is not None:  # the overflow flags travel in the same read
                extra[:0] = [scaler.unscale_(p for g in opt.param_groups for p in g["params"]).to(losses.device),
                             inner.overflowed(losses.device)]
            # one device-to-host read per phase, after the backward is queued (a read before it
            # would leave the device idle while the host queues the backward)
            stacked = torch.cat([losses, *extra])
            read = stacked.tolist()
            values = dict(zip(terms, read))
            n_flags = 2 if scaler is not None else 0
            overflow = scaler is not None and read[len(terms)] > 0
            # an inner gradient overflowed (its output was finite): may have made the loss non-finite
            inner_overflow = scaler is not None and read[len(terms) + 1] > 0
            error = queued.first_error(read[len(terms) + n_flags:])
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            code = (_INPUT if error is not None else _OVERFLOW if inner_overflow else _NON_FINITE if bad
                    else _OVERFLOW if overflow else 0)
            bad_rank, bad_code = first_failure(code, stacked.device)  # every rank acts alike
            if scaler is not None:
                values["loss_scale"] = scaler.scale_value
                values["skipped"] = float(bad_code == _OVERFLOW)
            if bad_code == _OVERFLOW:  # gradients overflowed on some rank: skip, back off
                opt.zero_grad(set_to_none=True)
                stats.restore()
                if scaler is not None:
                    scaler.update(True)
                    if scaler.scale_value < 1.0:  # every rank holds the same scale: all raise
                        what = ("the loss is not finite only through a gradient inside it that overflowed"
                                if bad else "the loss itself is finite")
                        raise NonFiniteLossError(
                            f"egl.recipes.{self.name}: the gradients of phase '{phase.name}' are not finite even "
                            f"with the loss scaled down to {scaler.scale_value:g} at step {step} ({what}). "
                            "Check the inputs and the model for NaN, or use precision='bf16'; "
                            "parameters were not updated at this step.")
                return {f"{phase.name}/{k}": v for k, v in values.items()}
            if bad_rank >= 0:
                opt.zero_grad(set_to_none=True)
                stats.restore()  # a NaN batch wrote NaN into them: the model would answer NaN in eval
                raise error if error is not None else self._failure(phase.name, step, values, bad, bad_rank, bad_code)
            opt.step()
            if scaler is not None:
                scaler.update(False)
        return {f"{phase.name}/{k}": v for k, v in values.items()}

    def _failure(self, phase: str, step: int, values: dict[str, float], bad: list[str], bad_rank: int,
                 bad_code: int) -> Exception:
        """The error for a phase stopped by a non-finite term here, or by any failure on another rank."""
        fn = f"egl.recipes.{self.name}"
        if bad_code == _ERROR:
            return RankFailedError(f"{fn}: rank {bad_rank} failed while computing the terms of phase '{phase}' at "
                                   f"step {step} (an error that is not an input check). See rank {bad_rank}'s "
                                   "traceback; parameters were not updated at this step.")
        if not bad and bad_code == _INPUT:
            return fail(fn, "batch", "inputs that pass every check on every rank",
                        f"a failed input check of phase '{phase}' on rank {bad_rank} at step {step}",
                        f"See rank {bad_rank}'s error, which names the argument and the fix; "
                        "parameters were not updated at this step")
        where = (f"loss term '{phase}/{bad[0]}' is {values[bad[0]]}" if bad else
                 f"a loss term of phase '{phase}' is not finite on rank {bad_rank}")
        return NonFiniteLossError(f"{fn}: {where} at step {step}. Lower the learning rate or the term's weight, "
                                  "or check the inputs for NaN; parameters were not updated at this step.")

    def fit(self, loader: Iterable[Any], steps: int, **kwargs: Any) -> list[dict[str, float]]:
        """Train for ``steps`` steps with :func:`egl.train.fit` (see there for options)."""
        from egl.train import fit

        return fit(self, loader, steps, **kwargs)


def builds(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a recipe's factory (``recipes.align``) that returns ``cls(model, **kwargs)``: it
    shows ``cls``'s signature (``help()``, ``inspect``, IDEs) and names an argument ``cls`` does not
    take with the signature, as ``egl.create`` does (a typo was a bare ``TypeError``)."""
    signature = inspect.signature(cls)

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(factory)
        def build(*args: Any, **kwargs: Any) -> Any:
            from egl.registry import _build  # (lazy: the registry imports the recipes)

            return _build(cls, "recipe", factory.__name__, f"egl.recipes.{factory.__name__}", args, kwargs,
                          arg="kwargs")

        build.__signature__ = signature.replace(return_annotation=cls.__name__)  # type: ignore[attr-defined]
        return build

    return decorate


_WARNED_OUTSIDE: set[tuple[str, str]] = set()


def _check_terms(terms: object, phase: str, fn: str) -> None:
    """What a phase's ``compute`` returns: a dict of 0-d tensors with a ``"total"`` that requires
    grad (metadata only: no device read)."""
    fix = "Return {'term': loss, ..., 'total': the loss to minimise}, each a 0-d tensor (reduce with .mean())"
    if not isinstance(terms, dict) or "total" not in terms:
        got = f"keys {sorted(map(str, terms))}" if isinstance(terms, dict) else describe(terms)
        raise fail(fn, f"phase '{phase}' terms", "a dict of loss terms with a 'total'", got, fix)
    bad = {k: describe(v) for k, v in terms.items() if not isinstance(v, Tensor) or v.dim() != 0}
    if bad:
        k = next(iter(bad))
        raise fail(fn, f"phase '{phase}' terms", "0-d tensors (one value per term)", f"{k!r}: {bad[k]}", fix)
    total = terms["total"]
    if torch.is_grad_enabled() and not total.requires_grad:
        raise fail(fn, f"phase '{phase}' terms", "a 'total' that requires grad (the loss the phase minimises)",
                   "a total that does not (computed without grad, detached, or from no parameter)",
                   "Compute the total from the phase's modules with grad enabled, and do not detach it")
