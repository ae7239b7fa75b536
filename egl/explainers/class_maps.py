"""Signed Grad-CAM maps of *every* class at once, for losses that look at negative evidence.

``class_maps(model, x)`` returns ``[B, K, h, w]`` raw, signed maps (no ReLU, no
normalisation, feature resolution) and the logits. Where the head is global average
pooling then ``Linear`` this is one forward pass and one einsum with the whole weight
matrix (``W · A / (h·w)``); otherwise one forward pass and K backward passes through
what follows the target layer only (the head, or a ViT's last block and head), never
through the trunk.

``weighting=`` takes the channel weighting of a Grad-CAM variant instead (an explainer such
as :class:`~egl.explainers.LayerCAM` or :class:`~egl.explainers.GradCAMPlusPlus`, or a
plugin's subclass of :class:`~egl.explainers.GradCAM`): class ``k``'s map is the variant's raw
map for target ``k`` (its ``weigh`` on the gradient of logit ``k``, or its ``weigh_uniform``
on ``W[k]`` at a linear head), computed in float32 at least.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from egl._amp import inner_grad, no_autocast
from egl._check import check_logits, fail
from egl.backbones import _LayoutError, head_kind, resolve_target, unsupported_model
from egl.errors import UnsupportedModelError
from egl.explainers.base import Explanation, double_backward_ready
from egl.explainers.grad_cam import CAMParts, GradCAM, _to_nchw, same_maps_as_grad_cam

__all__ = ["class_maps"]


def class_maps(model: nn.Module, x: Tensor, *, layer: str = "auto", create_graph: bool = False,
               weighting: GradCAM | None = None) -> Explanation:
    """Raw signed Grad-CAM (or a variant's map) of all classes.

    Args:
        model: classifier returning logits ``[B, K]``.
        x: input batch.
        layer: Grad-CAM target layer (``"auto"`` or a dotted path).
        create_graph: keep the maps differentiable with respect to the model's parameters.
        weighting: a :class:`~egl.explainers.GradCAM` (or variant) instance whose channel
            weighting (``weigh`` / ``weigh_uniform``, and ``detach_weights``) makes the maps;
            None (default) or one with Grad-CAM's weighting: Grad-CAM's maps.

    Returns:
        ``Explanation(saliency=[B, K, h, w], logits=[B, K])``.

    Shape:
        x: ``B C H W``; maps: ``B K h w``.

    Example:
        >>> import timm, torch
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> class_maps(model, torch.randn(2, 3, 64, 64)).saliency.shape
        torch.Size([2, 5, 2, 2])
    """
    fn = "egl.explainers.class_maps"
    if weighting is not None and not isinstance(weighting, GradCAM):
        raise fail(fn, "weighting", "a GradCAM instance or a variant's (LayerCAM, GradCAMPlusPlus, ...)",
                   type(weighting).__name__, "Pass e.g. weighting=egl.explainers.LayerCAM(model), or leave it out "
                   "for Grad-CAM")
    from egl.explainers._gradient_free import GradientFreeCAM, no_class_weighting

    if isinstance(weighting, GradientFreeCAM):  # (before any forward pass)
        raise no_class_weighting(weighting)
    cam = GradCAM(model, layer, upsample=False, normalize=False, relu=False)
    # Grad-CAM's own weighting takes the fast path below, unless its weights are to be held constant
    variant = weighting if weighting is not None and (not same_maps_as_grad_cam(weighting)
                                                      or weighting.detach_weights) else None
    x = cam._check_input(x, create_graph)
    if cam._target is None or cam._stale_split():
        cam._target = resolve_target(model, layer, x, fn=fn)
    try:
        maps, logits = _maps(cam, x, create_graph, fn, variant)
    except _LayoutError as e:  # tokens egl cannot lay out: name a layer that works (as GradCAM does)
        if layer != "auto":
            raise
        raise unsupported_model(model, x, e.detail, fn) from None
    if x.is_floating_point():  # the input's dtype, as every explainer returns (autocast gives bf16)
        maps = maps.to(x.dtype)
    return Explanation(maps if create_graph else maps.detach(), logits if create_graph else logits.detach())


@contextlib.contextmanager
def _float32_at_least(a: Tensor) -> Iterator[torch.dtype]:
    """Autocast off; yields ``a``'s dtype promoted to float32 at least (the Grad-CAM epilogue's)."""
    with no_autocast(a.device.type):
        yield torch.promote_types(a.dtype, torch.float32)


def _raw(parts: CAMParts) -> Tensor:
    """``scale * sum_c w[:, c] a[:, c]`` (``[B, h, w]``) in float32 at least."""
    a, w, scale = parts
    with _float32_at_least(a) as dt:
        return torch.einsum("bc,bchw->bhw", w.to(dt), a.to(dt)) * scale


def _maps(cam: GradCAM, x: Tensor, create_graph: bool, fn: str, variant: GradCAM | None) -> tuple[Tensor, Tensor]:
    """The maps and logits; ``variant``: the weighting of a Grad-CAM variant (None: Grad-CAM's)."""
    model: Any = cam.model
    target = cam._target
    assert target is not None
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    with double_backward_ready(create_graph):
        if target.module is None:
            feats, target = cam._features(x, create_graph, fn)
            if head_kind(model, target, feats) == "linear":
                with torch.set_grad_enabled(create_graph):
                    logits = check_logits(model.forward_head(feats), x.shape[0], fn)
                    a = _to_nchw(feats, target.fmt, model, hw)
                    weight = model.get_classifier().weight.to(a.dtype)
                    if variant is not None:  # d s_k / d A = W[k] / (h w) at every position
                        scale = 1.0 / (a.shape[-2] * a.shape[-1])
                        weight = weight.detach() if variant.detach_weights else weight
                        return torch.stack([_raw(variant.weigh_uniform(a, weight[k].expand(a.shape[0], -1), scale))
                                            for k in range(weight.shape[0])], dim=1), logits
                    with _float32_at_least(a) as dt:  # as Grad-CAM's epilogue sums (16-bit: 3e-3 off it)
                        maps = torch.einsum("kc,bchw->bkhw", weight.to(dt), a.to(dt))
                    return maps / (a.shape[-2] * a.shape[-1]), logits
            act = feats if create_graph else feats.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = model.forward_head(act)
            fmt = target.fmt
        else:
            act, logits, fmt = cam._hooked_activation(x, create_graph, fn)
        check_logits(logits, x.shape[0], fn)
        with torch.set_grad_enabled(create_graph):
            a = _to_nchw(act, fmt, model, hw)
        maps, reached = [], False
        held = variant is not None and variant.detach_weights  # constant weights: no second-order graph
        for k in range(int(logits.shape[1])):  # backward passes through the head (or tail) only
            g = None
            if logits.requires_grad:
                with torch.enable_grad():
                    g = inner_grad(logits[:, k].float().sum(), act, retain_graph=True, allow_unused=True,
                                   create_graph=create_graph and not held)[0]
            reached = reached or g is not None
            g = torch.zeros_like(act) if g is None else g
            with torch.set_grad_enabled(create_graph):
                if variant is not None:
                    g = _to_nchw(g, fmt, model, hw)
                    maps.append(_raw(variant.weigh(a, g.detach() if variant.detach_weights else g)))
                    continue
                # in float32 at least: loss-scaled inner gradients (egl._amp) are tiny in float16
                maps.append(_raw((a, _to_nchw(g, fmt, model, hw).mean(dim=(2, 3)), 1.0)))
        if not reached:
            raise UnsupportedModelError(
                f"{fn}: the logits of {type(model).__name__} do not depend on layer '{cam.target_layer}'. "
                "Pass layer= naming a layer on the path to the output.")
    with torch.set_grad_enabled(create_graph):
        return torch.stack(maps, dim=1), logits
