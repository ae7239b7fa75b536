"""Signed Grad-CAM maps of *every* class at once, for losses that look at negative evidence.

``class_maps(model, x)`` returns ``[B, K, h, w]`` raw, signed maps (no ReLU, no
normalisation, feature resolution) and the logits. Where the head is global average
pooling then ``Linear`` this is one forward pass and one einsum with the whole weight
matrix (``W · A / (h·w)``); otherwise it runs Grad-CAM once per class (K forward passes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from egl.backbones import head_kind
from egl.explainers.base import Explanation, double_backward_ready
from egl.explainers.grad_cam import GradCAM, _to_nchw

__all__ = ["class_maps"]


def class_maps(model: nn.Module, x: Tensor, *, layer: str = "auto", create_graph: bool = False) -> Explanation:
    """Raw signed Grad-CAM of all classes.

    Args:
        model: classifier returning logits ``[B, K]``.
        x: input batch.
        layer: Grad-CAM target layer (``"auto"`` or a dotted path).
        create_graph: keep the maps differentiable with respect to the model's parameters.

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
    cam = GradCAM(model, layer, upsample=False, normalize=False, relu=False)
    x = cam._check_input(x, create_graph)
    target = cam._target
    hw = (int(x.shape[-2]), int(x.shape[-1]))
    m: Any = model
    if target is not None and target.module is None:
        with torch.set_grad_enabled(create_graph), double_backward_ready(False):
            feats = m.forward_features(x)
            if isinstance(feats, Tensor) and head_kind(m, target, feats) == "linear":
                logits = m.forward_head(feats)
                a = _to_nchw(feats, target.fmt, m, hw)
                maps = torch.einsum("kc,bchw->bkhw", m.get_classifier().weight.to(a.dtype), a)
                maps = maps / (a.shape[-2] * a.shape[-1])
                return Explanation(maps if create_graph else maps.detach(),
                                   logits if create_graph else logits.detach())
    per_class = []
    logits = None
    k = None
    while k is None or len(per_class) < k:
        out = cam.explain(x, len(per_class), create_graph=create_graph)
        per_class.append(out.saliency)
        logits = out.logits if logits is None else logits
        k = int(out.logits.shape[1])
    assert logits is not None
    return Explanation(torch.cat(per_class, dim=1), logits)
