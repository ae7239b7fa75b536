"""Adapter: any captum attribution method as an egl explainer (Kokhlikyan et al., "Captum", 2020).

``egl.create("explainer", "captum", model, method="IntegratedGradients")`` wraps
``captum.attr.IntegratedGradients(model)``; layer methods (``LayerGradCam``,
``LayerConductance``...) take ``layer=`` (a dotted path, or ``"auto"`` for the last
spatial map). The attribution is reduced to one channel (sum over channels, then the
absolute value by default), resized bilinearly to the input and min-max normalised,
so its output has the same contract as every other explainer.

captum attributions are not differentiable with respect to the model's parameters in
general, so this explainer refuses ``create_graph=True`` (``differentiable = False``).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import check_flag, check_logits, fail
from egl.backbones import _module, _probe_last_map
from egl.errors import UnsupportedModelError
from egl.explainers._postprocess import finalize
from egl.explainers.base import Explainer, Explanation, targets

__all__ = ["CaptumExplainer"]


def _captum_class(method: Any, fn: str) -> type:
    from captum import attr

    if isinstance(method, type):
        if not issubclass(method, attr.Attribution):
            raise fail(fn, "method", "a captum.attr Attribution class or its name", repr(method),
                       "Pass e.g. captum.attr.Saliency or 'Saliency'")
        return method
    if not isinstance(method, str):
        raise fail(fn, "method", "a captum.attr class or its name", repr(method), "Pass e.g. 'Saliency'")
    names = sorted(n for n in dir(attr) if isinstance(getattr(attr, n), type)
                   and issubclass(getattr(attr, n), attr.Attribution))
    if method not in names:
        close = difflib.get_close_matches(method, names, n=3)
        hint = f"Did you mean {', '.join(map(repr, close))}? " if close else ""
        raise fail(fn, "method", "the name of a captum.attr attribution class", repr(method),
                   f"{hint}Available: {', '.join(names)}")
    return getattr(attr, method)


class CaptumExplainer(Explainer):
    """A captum attribution method behind the egl explainer interface.

    Args:
        model: classifier returning logits ``[B, K]``.
        method: a ``captum.attr`` class or its name (default ``"Saliency"``).
        layer: for layer methods only: a dotted path or ``"auto"`` (last spatial map).
        absolute: absolute value after summing channels (default True).
        attribute_kwargs: extra arguments for ``attribute`` (``LayerGradCam`` defaults to
            ``relu_attributions=True``, matching Grad-CAM).
        upsample, normalize: as for every explainer.
        **method_kwargs: extra constructor arguments of the captum class.

    Shape:
        x: ``B C H W``; returns ``B 1 H W``.
    """

    name = "captum"
    differentiable = False

    def __init__(self, model: nn.Module, method: Any = "Saliency", *, layer: str = "auto",
                 absolute: bool = True, attribute_kwargs: dict[str, Any] | None = None,
                 upsample: bool = True, normalize: bool = True, **method_kwargs: Any) -> None:
        super().__init__(model, upsample=upsample, normalize=normalize)
        from captum.attr import LayerGradCam, _utils

        fn = "egl.explainers.CaptumExplainer"
        self.method_cls = _captum_class(method, fn)
        from captum.attr import NoiseTunnel

        if issubclass(self.method_cls, NoiseTunnel):  # it wraps an attribution, not a model
            raise fail(fn, "method", "an attribution method applied to the model",
                       "'NoiseTunnel' (it wraps another attribution)",
                       "Use captum itself for NoiseTunnel(Saliency(model)), or pass a method such as 'Saliency'")
        self.is_layer = issubclass(self.method_cls, _utils.attribution.LayerAttribution)
        if not isinstance(layer, str):
            raise fail(fn, "layer", "a dotted module path or 'auto'", repr(layer)[:100], "Pass e.g. layer='auto'")
        if not self.is_layer and layer != "auto":
            raise fail(fn, "layer", f"'auto' for {self.method_cls.__name__} (only layer methods take a layer)",
                       repr(layer), "Leave layer out, or use a layer method such as 'LayerGradCam'")
        if attribute_kwargs is not None and "target" in attribute_kwargs:
            raise fail(fn, "attribute_kwargs", "captum's attribute arguments other than 'target'",
                       repr(sorted(attribute_kwargs)), "Give the targets to the call: explainer(x, target=...)")
        self.layer = layer
        self.absolute = check_flag(absolute, "egl.explainers.CaptumExplainer", "absolute")
        self.attribute_kwargs = dict(attribute_kwargs or {})
        if self.method_cls is LayerGradCam:
            self.attribute_kwargs.setdefault("relu_attributions", True)
        self.method_kwargs = method_kwargs
        self._method: Any = None
        self._probed: tuple[str, nn.Module] | None = None  # layer="auto": probed per input size (cached)
        if not self.is_layer:
            self._method = self.method_cls(model, **method_kwargs)
        elif layer != "auto":
            self._method = self.method_cls(model, _module(model, layer, fn), **method_kwargs)

    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        """Attribution maps and logits for ``x``; ``target=None`` explains the predicted class."""
        fn = "egl.explainers.captum"
        x = self._check_input(x, create_graph)
        tgt = targets(target, x.shape[0], fn, x.device)
        with torch.no_grad():
            logits = check_logits(self.model(x), x.shape[0], fn)
        t = logits.argmax(1) if tgt is None else tgt.index(logits.shape[1], fn)  # captum gathers: no deferral
        if self.is_layer and self.layer == "auto":  # probed once per input size; rebuilt when it changes
            name = _probe_last_map(self.model, x)
            layer = _module(self.model, name, fn)
            if (name, layer) != self._probed:  # another layer, or the same name replaced by a new module
                self._method = self.method_cls(self.model, layer, **self.method_kwargs)
                self._probed = (name, layer)
        # a leaf that requires grad: captum warns on every call otherwise, and x stays untouched
        attr = self._method.attribute(x.detach().requires_grad_(True), target=t, **self.attribute_kwargs)
        if isinstance(attr, tuple):
            attr = attr[0]
        if not isinstance(attr, Tensor) or attr.dim() != 4:
            raise UnsupportedModelError(
                f"{fn}: {self.method_cls.__name__} returned "
                f"{list(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__}; egl needs "
                "[B, C, H, W] attributions. Pick a spatial layer with layer=, or use 'grad_cam'."
            )
        sal = attr.detach().float().sum(dim=1, keepdim=True)
        if self.absolute:
            sal = sal.abs()
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        return Explanation(finalize(sal, hw if self.upsample else None, self.normalize).to(x.dtype), logits)


