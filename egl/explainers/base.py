"""The explainer interface: a class that binds a model, called on ``(x, target)``.

Every explainer returns saliency of shape ``[B, 1, H, W]`` on the model's device. With
``create_graph=True`` that saliency is differentiable with respect to the model's
parameters, so it can sit inside a training loss. Explainers never change the model's
train/eval mode and leave no hooks behind: hooks live for one call, and
``with Explainer(model) as e:`` scopes the explainer for readability and symmetry
with other libraries.

Every subclass's :meth:`Explainer.explain` is checked on return (see :func:`check_explanation`), so a
plugin that breaks the contract is named where it is called, by every recipe and metric alike.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
import weakref
from collections.abc import Callable
from typing import Any, ClassVar, ContextManager, NamedTuple

import torch
from torch import Tensor, nn

from egl._arguments import record_subclass_arguments, records_arguments
from egl._check import check_flag, check_model_dtype, check_shape, describe, fail, model_input_errors
from egl._module_hooks import structure_stamp
from egl.explainers._targets import Targets, as_targets, check_target_range, targets

__all__ = ["Explainer", "Explanation", "Targets", "as_targets", "check_target_range", "targets", "explained_model",
           "model_device", "double_backward_ready", "check_explanation", "CONTRACT"]

#: What :meth:`Explainer.explain` returns, as the errors of :func:`check_explanation` spell it.
CONTRACT = "Explanation(saliency=[B, 1, H, W] in [0, 1], logits=[B, num_classes])"


class Explanation(NamedTuple):
    """Saliency ``[B, 1, H, W]`` together with the logits ``[B, K]`` computed on the way.

    ``saliency`` is a floating-point map on the input's device, in [0, 1] when normalised
    (``[B, C, H, W]`` for an explainer that keeps channels, ``[B, 1, h, w]`` without upsampling);
    ``logits`` are the model's class scores for the same batch. With ``create_graph=True`` both
    stay attached to the model's graph: ALIGN takes its cross-entropy from ``logits`` and
    backpropagates its alignment loss through ``saliency``.
    """

    saliency: Tensor
    logits: Tensor


def model_device(model: nn.Module) -> torch.device | None:
    """Device of the model's first parameter or buffer (None for a parameterless model)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return None


def double_backward_ready(create_graph: bool) -> ContextManager[Any]:
    """Context for a forward pass whose gradients will themselves be differentiated.

    Fused attention kernels (flash and memory-efficient, on CPU and GPU) have no double
    backward, so a ViT's map with ``create_graph=True`` would fail in ``loss.backward()``.
    With ``create_graph`` the pass runs ``scaled_dot_product_attention`` on the math
    backend, whose backward is differentiable; otherwise nothing changes.
    """
    if not create_graph:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


_WARNED_NO_GRAPH: set[type] = set()


def _trainable(model: Any) -> int:
    """How many of ``model``'s parameters require grad (0 for something that is not a module)."""
    return sum(p.requires_grad for p in model.parameters()) if isinstance(model, nn.Module) else 0


def check_explanation(explainer: "Explainer", out: object, x: object, create_graph: bool) -> Explanation:
    """Raise :class:`~egl.errors.InputError` unless ``out`` keeps the explainer contract for input ``x``.

    ``out`` must be an :class:`Explanation` of a floating-point saliency ``[B, C, H, W]`` and logits
    ``[B, K]``, both on ``x``'s device, ``B`` being ``x``'s batch. With ``create_graph=True``, grad
    enabled and trainable parameters in the model, both must require grad: a map that does not
    would make a training loss on it train nothing, silently. Only metadata is read (types,
    shapes, devices, ``requires_grad``): no device synchronisation, nothing measurable per call.
    """
    cls = type(explainer)
    fn = f"{cls.__module__}.{cls.__name__}.explain"
    if not isinstance(out, Explanation):
        raise fail(fn, "return value", f"an egl.explainers.{CONTRACT}", describe(out),
                   f"Return egl.explainers.Explanation(saliency, logits) from {cls.__name__}.explain: the "
                   "[B, 1, H, W] map and the model's logits computed on the way (recipes train on both)")
    batch = x.shape[0] if isinstance(x, Tensor) and x.dim() > 0 else None
    sal, logits = out.saliency, out.logits
    if not (isinstance(sal, Tensor) and sal.dim() == 4 and sal.is_floating_point()
            and (batch is None or sal.shape[0] == batch)):
        raise fail(fn, "saliency", f"a floating-point [B, 1, H, W] map with B = {batch} (the input's batch), "
                   f"as in {CONTRACT}", f"saliency = {describe(sal)}",
                   "Return one map per image, shaped [B, 1, H, W] (e.g. reduce channels with "
                   "sal.sum(1, keepdim=True), unsqueeze a [B, H, W] map with sal[:, None])")
    if not (isinstance(logits, Tensor) and logits.dim() == 2 and (batch is None or logits.shape[0] == batch)):
        raise fail(fn, "logits", f"the model's [B, num_classes] scores with B = {batch}, as in {CONTRACT}",
                   f"logits = {describe(logits)}", "Return the logits of the forward pass that the map explains")
    if isinstance(x, Tensor) and (sal.device != x.device or logits.device != x.device):
        bad = sal if sal.device != x.device else logits
        raise fail(fn, "saliency" if bad is sal else "logits", f"a tensor on the input's device ({x.device})",
                   describe(bad), "Compute on the input's device; do not move the result to the CPU")
    if create_graph and torch.is_grad_enabled() and not (sal.requires_grad and logits.requires_grad):
        n = _trainable(explainer.model)
        if n or (isinstance(x, Tensor) and x.requires_grad):
            why = (f"{n} of {type(explainer.model).__name__}'s parameters" if n else "the input") + " require grad"
            if not logits.requires_grad:  # a forward pass through them under grad always does: detached
                raise fail(fn, "logits", f"logits that require grad (create_graph=True was asked and {why})",
                           f"logits that do not: {cls.__name__} ran the forward pass without grad or detached "
                           "its logits, so a training loss on them (ALIGN's cross-entropy) trains nothing",
                           "Run the forward pass with grad enabled and return its logits as they are when "
                           "create_graph=True; an explainer that cannot sets differentiable = False (then "
                           "recipes refuse it up front)")
            if cls not in _WARNED_NO_GRAPH:  # (a map may rightly not depend on them: only a head's bias trains)
                _WARNED_NO_GRAPH.add(cls)
                warnings.warn(f"{fn}: create_graph=True was asked and {why}, but the saliency does not "
                              f"require grad: a training loss on it (ALIGN's alignment term) trains nothing. If "
                              f"{cls.__name__} ignored create_graph or detached its map, compute gradients with "
                              "torch.autograd.grad(..., create_graph=create_graph) and detach nothing; if the "
                              "trainable parameters do not shape the map (only a head's bias), this is expected. "
                              "(Warned once per explainer class.)", UserWarning, stacklevel=4)
    return out


def _checked(explain: Callable[..., Any]) -> Callable[..., Explanation]:
    """Wrap a subclass's ``explain`` so that what it returns goes through :func:`check_explanation`."""

    @functools.wraps(explain)
    def checked(self: "Explainer", *args: Any, **kwargs: Any) -> Explanation:
        x = args[0] if args else kwargs.get("x")
        with model_input_errors(f"egl.explainers.{getattr(self, 'name', '') or type(self).__name__}", "x", x):
            out = explain(self, *args, **kwargs)
        return check_explanation(self, out, x, kwargs.get("create_graph", False) is True)

    checked.__egl_checked__ = True  # type: ignore[attr-defined]
    return checked


#: Per model and structure stamp: its modules with a ``grad_checkpointing`` flag and whether any
#: has a ``fused_attn`` one (the flags themselves are read at every call: they change in place).
_FLAGGED: "weakref.WeakKeyDictionary[nn.Module, tuple[int, list[weakref.ref], list[weakref.ref]]]" = \
    weakref.WeakKeyDictionary()


def _checkpointed_attention(model: nn.Module) -> bool:
    """A timm model with activation checkpointing on (``set_grad_checkpointing(True)``) whose
    attention may run a fused kernel (``fused_attn``)."""
    stamp = structure_stamp(model)
    seen = _FLAGGED.get(model)
    if seen is None or seen[0] != stamp:
        mods = list(model.modules())
        seen = (stamp, [weakref.ref(m) for m in mods if hasattr(m, "grad_checkpointing")],
                [weakref.ref(m) for m in mods if hasattr(m, "fused_attn")])
        _FLAGGED[model] = seen
    if not any(getattr(r(), "grad_checkpointing", False) is True for r in seen[1]):
        return False
    return any(getattr(r(), "fused_attn", False) is True for r in seen[2])


def explained_model(model: nn.Module) -> nn.Module:
    """The module egl runs to explain (or differentiate) ``model``: a ``torch.compile``d model's
    eager model (hooks registered after compiling go unseen, as dynamo does not guard on them, and
    compiled graphs have no double backward), a ``nn.DataParallel``'s module (its replicas on
    several GPUs would each run a copy of egl's hook on their chunk of the batch); the same
    parameters and values. Any other model as it is."""
    if isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model.module if isinstance(model, nn.DataParallel) else model


class Explainer:
    """Base class of egl explainers. Subclasses implement :meth:`explain`.

    Args:
        model: the classifier; it must return logits ``[B, K]``.
        upsample: resize maps to the input size (bilinear); ``False`` keeps the native resolution.
        normalize: per-sample min-max to [0, 1] (an all-constant map gives zeros).

    Class attributes:
        name: registry name.
        differentiable: whether ``create_graph=True`` is supported.
    """

    name: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        record_subclass_arguments(cls)  # constructor arguments, for a recipe's config()
        explain = cls.__dict__.get("explain")
        if inspect.isfunction(explain) and not getattr(explain, "__egl_checked__", False):
            cls.explain = _checked(explain)  # type: ignore[method-assign]

    @records_arguments
    def __init__(self, model: nn.Module, *, upsample: bool = True, normalize: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise fail(f"egl.explainers.{type(self).__name__}", "model", "a torch.nn.Module",
                       describe(model), "Pass the classifier module itself")
        self.model = explained_model(model)
        fn = f"egl.explainers.{type(self).__name__}"
        self.upsample = check_flag(upsample, fn, "upsample")
        self.normalize = check_flag(normalize, fn, "normalize")

    # -- the work ---------------------------------------------------------------------
    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        """Saliency and logits for ``x`` (``target=None`` explains the predicted class).

        Subclasses implement it; egl checks what it returns (:func:`check_explanation`).

        Args:
            x: images ``[B, C, H, W]`` on the model's device (check them with ``self._check_input``).
            target: class per image (int, list, LongTensor), or ``None`` for the predicted class.
            create_graph: keep both outputs differentiable with respect to the model's parameters.

        Returns:
            ``Explanation(saliency=[B, 1, H, W] in [0, 1], logits=[B, num_classes])`` on ``x``'s device.

        Raises:
            InputError: the subclass returned something else, or ignored ``create_graph=True``.
        """
        raise NotImplementedError

    def __call__(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Tensor:
        return self.explain(x, target, create_graph=create_graph).saliency

    # -- shared checks ----------------------------------------------------------------
    def _check_input(self, x: Any, create_graph: bool) -> Tensor:
        fn = f"egl.explainers.{self.name or type(self).__name__}"
        check_flag(create_graph, fn, "create_graph")
        x = check_shape(x, "B C H W", fn, "x")
        if x.shape[0] == 0:
            raise fail(fn, "x", "at least one image", describe(x), "Pass a non-empty batch")
        dev = model_device(self.model)
        if dev is not None and dev != x.device:
            raise fail(fn, "x", f"a tensor on the model's device ({dev})", describe(x),
                       f"Move the batch with x.to('{dev}')")
        check_model_dtype(self.model, x, fn, "x")
        if torch.is_inference_mode_enabled():  # autograd cannot be switched back on inside it
            raise fail(fn, "x", "a call outside torch.inference_mode() (explainers differentiate the model)",
                       "a call inside inference mode", "Use torch.no_grad() instead: explainers work inside it")
        if create_graph and not self.differentiable:
            raise fail(fn, "create_graph", "False for this explainer (it is not differentiable)",
                       "True", "Use 'grad_cam' or 'input_gradient' inside a training loss")
        if create_graph and torch.is_grad_enabled() and _checkpointed_attention(self.model):
            raise fail(fn, "create_graph", "a model without activation checkpointing around fused attention "
                       "(the checkpoint recomputes the forward in loss.backward(), outside the math attention "
                       "backend that a double backward needs, and torch refuses the mismatch)",
                       "create_graph=True on a model with grad checkpointing on",
                       "Call model.set_grad_checkpointing(False) for steps whose loss holds a map")
        return x

    # -- context manager ----------------------------------------------------------------
    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove_hooks()

    def remove_hooks(self) -> None:
        """Remove any hook this explainer holds (explainers here hold none between calls)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__})"
