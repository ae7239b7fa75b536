"""Grad-CAM++ (Chattopadhyay et al., "Grad-CAM++: Generalized Gradient-Based Visual
Explanations for Deep Convolutional Networks", WACV 2018), batched and trainable.

``alpha_k = sum_ij a_k[i, j] * ReLU(g_k[i, j])``, ``map = ReLU(sum_k alpha_k A_k)``, with
``g = d s_y / d A`` and the paper's closed form for an exponential score (its eq. 19):

    a_k[i, j] = g^2 / (2 g^2 + (sum_ab A_k[a, b]) g^3) = 1 / (2 + S_k g),   S_k = sum_ab A_k[a, b]

(``g`` at ``[i, j]``; where ``g <= 0`` the term is 0 through the ReLU). Ours, where the paper is
silent: the simplified form ``1 / (2 + S_k g)`` (no ``g^2`` that underflows in half precision,
no epsilon), and its denominator clamped to at least ``DENOMINATOR_MIN = 1``: for post-ReLU
maps (``S_k >= 0``) and ``g > 0`` it is at least 2 and the clamp never acts; for signed
activations (ViT tokens, pre-activation layers) it keeps ``a`` finite and at most 1 where the
paper's formula would divide by zero or change sign. The weights are sums over positions, not
means, as in the paper; with ``normalize=True`` (the default) the scale does not matter.
Where the head is global average pooling then ``Linear`` the gradient is ``W[y] / (h·w)``
everywhere and the weights have a closed form (one forward pass, no backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from egl.explainers.grad_cam import CAMParts, GradCAM

__all__ = ["GradCAMPlusPlus", "grad_cam_plus_plus", "DENOMINATOR_MIN"]

#: Lower clamp of ``2 + S_k g`` (see the module docstring): inactive for post-ReLU activations.
DENOMINATOR_MIN = 1.0


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ bound to a model and a target layer; arguments as :class:`~egl.explainers.GradCAM`.

    Unlike Grad-CAM, the map depends on the gradient's scale (``2 + S_k g``), not only its
    direction: explaining a logit and explaining ten times that logit give different maps.

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` (or ``B 1 h w`` with ``upsample=False``).

    Example:
        >>> import timm, torch
        >>> from egl.explainers import GradCAMPlusPlus
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> with GradCAMPlusPlus(model) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64), target=[0, 3])
        >>> maps.shape
        torch.Size([2, 1, 64, 64])
    """

    name = "grad_cam_plus_plus"

    def weigh_uniform(self, a: Tensor, w: Tensor, scale: float) -> CAMParts:
        # g = scale * w at all h*w positions: alpha = h*w * ReLU(g) / (2 + S g) = ReLU(w) / (2 + S g)
        total = self.weight_input(a).sum(dim=(2, 3))  # [B, C]
        wf = w.to(total.dtype)
        alpha = torch.relu(wf) / (2 + total * (scale * wf)).clamp(min=DENOMINATOR_MIN)
        return a, alpha.to(w.dtype), 1.0

    def weigh(self, a: Tensor, g: Tensor) -> CAMParts:
        total = self.weight_input(a).sum(dim=(2, 3), keepdim=True)  # [B, C, 1, 1]
        gf = g.to(total.dtype)
        alpha = (torch.relu(gf) / (2 + total * gf).clamp(min=DENOMINATOR_MIN)).sum(dim=(2, 3))
        return a, alpha, 1.0


def grad_cam_plus_plus(model: nn.Module, x: Tensor, target: Any = None, *, layer: str = "auto",
                       create_graph: bool = False, upsample: bool = True, normalize: bool = True,
                       path: str = "auto", relu: bool = True, detach_weights: bool = False) -> Tensor:
    """Functional Grad-CAM++: ``GradCAMPlusPlus(model, layer, ...)(x, target, create_graph=...)``.

    Arguments as :func:`~egl.explainers.grad_cam`. Returns saliency ``[B, 1, H, W]``.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import grad_cam_plus_plus
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> grad_cam_plus_plus(model, torch.randn(2, 3, 64, 64), 1, upsample=False).shape
        torch.Size([2, 1, 2, 2])
    """
    return GradCAMPlusPlus(model, layer, upsample=upsample, normalize=normalize, path=path, relu=relu,
                           detach_weights=detach_weights)(x, target, create_graph=create_graph)
