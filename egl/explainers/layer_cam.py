"""LayerCAM (Jiang et al., "LayerCAM: Exploring Hierarchical Class Activation Maps for
Localization", IEEE TIP 2021), batched and trainable.

``map = ReLU(sum_k ReLU(g_k) * A_k)`` with ``g = d s_y / d A`` at every position: each position
weighs its own activations by its positive gradient, instead of one weight per channel
(Grad-CAM). At the last layer of a network whose head is global average pooling then
``Linear`` the gradient is the same everywhere, ``W[y] / (h·w)``, and LayerCAM is Grad-CAM
with the negative weights dropped (one forward pass, no backward); at earlier layers it keeps
finer detail than Grad-CAM, which is what the paper uses it for. Everything else (paths,
upsampling, min-max normalisation, ``create_graph``) is :class:`~egl.explainers.GradCAM`'s.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from egl.explainers.grad_cam import CAMParts, GradCAM, position_map, weight_dtype

__all__ = ["LayerCAM", "layer_cam"]


class LayerCAM(GradCAM):
    """LayerCAM bound to a model and a target layer; arguments as :class:`~egl.explainers.GradCAM`.

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` (or ``B 1 h w`` with ``upsample=False``).

    Example:
        >>> import timm, torch
        >>> from egl.explainers import LayerCAM
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> with LayerCAM(model, layer="layer3") as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64), target=[0, 3])
        >>> maps.shape
        torch.Size([2, 1, 64, 64])
    """

    name = "layer_cam"

    def weigh_uniform(self, a: Tensor, w: Tensor, scale: float) -> CAMParts:
        return a, torch.relu(w), scale

    def weigh(self, a: Tensor, g: Tensor) -> CAMParts:
        dt = weight_dtype(a, g)
        return position_map((torch.relu(g.to(dt)) * a.to(dt)).sum(dim=1, keepdim=True))


def layer_cam(model: nn.Module, x: Tensor, target: Any = None, *, layer: str = "auto",
              create_graph: bool = False, upsample: bool = True, normalize: bool = True,
              path: str = "auto", relu: bool = True, detach_weights: bool = False) -> Tensor:
    """Functional LayerCAM: ``LayerCAM(model, layer, ...)(x, target, create_graph=...)``.

    Arguments as :func:`~egl.explainers.grad_cam`. Returns saliency ``[B, 1, H, W]``.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import layer_cam
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> layer_cam(model, torch.randn(2, 3, 64, 64), 1, layer="layer3", upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """
    return LayerCAM(model, layer, upsample=upsample, normalize=normalize, path=path, relu=relu,
                    detach_weights=detach_weights)(x, target, create_graph=create_graph)
