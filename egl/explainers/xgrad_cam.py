"""XGrad-CAM (Fu et al., "Axiom-based Grad-CAM: Towards Accurate Visualization and Explanation
of CNNs", BMVC 2020), batched and trainable.

``alpha_k = sum_ij (A_k[i, j] / sum_ij A_k) * g_k[i, j]``, ``map = ReLU(sum_k alpha_k A_k)``,
with ``g = d s_y / d A``: Grad-CAM's channel weights, averaged with the activations as
weights instead of uniformly (the paper derives them from its sensitivity and conservation
axioms). A channel whose activations sum to exactly zero gets weight 0 (ours: the paper
assumes post-ReLU maps, where such a channel is all zeros and adds nothing either way). On
signed activations (ViT tokens, pre-activation layers) a sum near zero gives a very large
weight: the method is meant for post-ReLU maps.
Where the head is global average pooling then ``Linear`` the gradient is uniform and the
weights reduce to Grad-CAM's (one forward pass, no backward). Everything else is
:class:`~egl.explainers.GradCAM`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from egl.explainers.grad_cam import CAMParts, GradCAM

__all__ = ["XGradCAM", "xgrad_cam"]


def _safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, and 0 where ``den`` is 0 (no NaN in the value or its gradient)."""
    nonzero = den != 0
    return torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), torch.zeros_like(num))


class XGradCAM(GradCAM):
    """XGrad-CAM bound to a model and a target layer; arguments as :class:`~egl.explainers.GradCAM`.

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` (or ``B 1 h w`` with ``upsample=False``).

    Example:
        >>> import timm, torch
        >>> from egl.explainers import XGradCAM
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> with XGradCAM(model, layer="layer3") as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64), target=[0, 3])
        >>> maps.shape
        torch.Size([2, 1, 64, 64])
    """

    name = "xgrad_cam"

    def weigh_uniform(self, a: Tensor, w: Tensor, scale: float) -> CAMParts:
        total = self.weight_input(a).sum(dim=(2, 3))  # [B, C]
        return a, w * (total != 0).to(w.dtype), scale

    def weigh(self, a: Tensor, g: Tensor) -> CAMParts:
        af = self.weight_input(a)
        alpha = _safe_divide((af * g.to(af.dtype)).sum(dim=(2, 3)), af.sum(dim=(2, 3)))
        return a, alpha, 1.0


def xgrad_cam(model: nn.Module, x: Tensor, target: Any = None, *, layer: str = "auto",
              create_graph: bool = False, upsample: bool = True, normalize: bool = True,
              path: str = "auto", relu: bool = True, detach_weights: bool = False) -> Tensor:
    """Functional XGrad-CAM: ``XGradCAM(model, layer, ...)(x, target, create_graph=...)``.

    Arguments as :func:`~egl.explainers.grad_cam`. Returns saliency ``[B, 1, H, W]``.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import xgrad_cam
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> xgrad_cam(model, torch.randn(2, 3, 64, 64), 1, layer="layer3", upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """
    return XGradCAM(model, layer, upsample=upsample, normalize=normalize, path=path, relu=relu,
                    detach_weights=detach_weights)(x, target, create_graph=create_graph)
