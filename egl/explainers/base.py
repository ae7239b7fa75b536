"""The explainer interface: a class that binds a model, called on ``(x, target)``.

Every explainer returns saliency of shape ``[B, 1, H, W]`` on the model's device. With
``create_graph=True`` that saliency is differentiable with respect to the model's
parameters, so it can sit inside a training loss. Explainers never change the model's
train/eval mode and leave no hooks behind: hooks live for one call, and
``with Explainer(model) as e:`` scopes the explainer for readability and symmetry
with other libraries.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, ContextManager, NamedTuple

import torch
from torch import Tensor, nn

from egl._check import check_flag, check_model_dtype, check_shape, describe, fail
from egl.explainers._targets import Targets, as_targets, check_target_range, targets

__all__ = ["Explainer", "Explanation", "Targets", "as_targets", "check_target_range", "targets",
           "model_device", "double_backward_ready"]


class Explanation(NamedTuple):
    """Saliency ``[B, 1, H, W]`` together with the logits ``[B, K]`` computed on the way."""

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

    def __init__(self, model: nn.Module, *, upsample: bool = True, normalize: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise fail(f"egl.explainers.{type(self).__name__}", "model", "a torch.nn.Module",
                       describe(model), "Pass the classifier module itself")
        self.model = model
        fn = f"egl.explainers.{type(self).__name__}"
        self.upsample = check_flag(upsample, fn, "upsample")
        self.normalize = check_flag(normalize, fn, "normalize")

    # -- the work ---------------------------------------------------------------------
    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        """Saliency and logits for ``x`` (``target=None`` explains the predicted class)."""
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
