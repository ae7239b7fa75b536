"""HiResCAM (Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks", arXiv 2011.08891, 2020), batched and trainable.

``map = ReLU(sum_k g_k * A_k)`` with ``g = d s_y / d A`` at every position: the gradient
multiplies the activations elementwise instead of being averaged first (Grad-CAM), so the map
is exactly how much each position adds to the logit when what follows the layer is linear.
Where the head is global average pooling then ``Linear`` the gradient is the same at every
position and HiResCAM equals Grad-CAM (the closed form, one forward pass); they differ for
heads that keep spatial structure (flatten + linear, attention pooling) and at earlier
layers. Everything else is :class:`~egl.explainers.GradCAM`'s.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from egl.explainers.grad_cam import CAMParts, GradCAM, position_map, weight_dtype

__all__ = ["HiResCAM", "hires_cam"]


class HiResCAM(GradCAM):
    """HiResCAM bound to a model and a target layer; arguments as :class:`~egl.explainers.GradCAM`.

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` (or ``B 1 h w`` with ``upsample=False``).

    Example:
        >>> import timm, torch
        >>> from egl.explainers import HiResCAM
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> with HiResCAM(model, layer="layer3") as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64), target=[0, 3])
        >>> maps.shape
        torch.Size([2, 1, 64, 64])
    """

    name = "hires_cam"

    # weigh_uniform: Grad-CAM's (a uniform gradient times the activations is Grad-CAM)

    def weigh(self, a: Tensor, g: Tensor) -> CAMParts:
        dt = weight_dtype(a, g)
        return position_map((g.to(dt) * a.to(dt)).sum(dim=1, keepdim=True))


def hires_cam(model: nn.Module, x: Tensor, target: Any = None, *, layer: str = "auto",
              create_graph: bool = False, upsample: bool = True, normalize: bool = True,
              path: str = "auto", relu: bool = True, detach_weights: bool = False) -> Tensor:
    """Functional HiResCAM: ``HiResCAM(model, layer, ...)(x, target, create_graph=...)``.

    Arguments as :func:`~egl.explainers.grad_cam`. Returns saliency ``[B, 1, H, W]``.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import hires_cam
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> hires_cam(model, torch.randn(2, 3, 64, 64), 1, layer="layer3", upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """
    return HiResCAM(model, layer, upsample=upsample, normalize=normalize, path=path, relu=relu,
                    detach_weights=detach_weights)(x, target, create_graph=create_graph)
