"""Eigen-CAM (Muhammad & Yeasin, "Eigen-CAM: Class Activation Map using Principal Components",
IJCNN 2020): the target layer's activations projected on their first principal component.

With ``A`` the activations of one image laid out as ``[h·w, C]`` (a row per position),
``map = ReLU(A v_1)``, ``v_1`` the first right singular vector of ``A``. No gradient and no
class: the map is the same whatever the target (the target is still checked and the logits
returned, as every explainer's). Upsampling and min-max normalisation are
:class:`~egl.explainers.GradCAM`'s, as is the target layer (``layer="auto"``).

Choices where the paper is silent:

* ``center=False`` (default): ``A`` as it is, as in the paper's equations; ``True`` subtracts
  each channel's mean over the positions first (principal components in the statistical
  sense, as pytorch-grad-cam does).
* A singular vector's sign is arbitrary; ours makes the projection agree with the total
  activation (``Σ_i p_i s_i >= 0``, ``s_i`` the sum of the channels' activations at position
  ``i``): on post-ReLU activations the first component of the uncentred ``A`` is then
  non-negative, and a centred one (whose projection sums to zero) still points the way the
  activations do.
* Computed from the eigenvectors of the smaller Gram matrix (``A Aᵀ`` or ``Aᵀ A``) in float32
  at least (float64 inputs in float64): the same vector as an SVD, at a fraction of its cost.
* One forward pass, no backward; inference only (``differentiable = False``): the gradient of an eigenvector is undefined
  where the top two eigenvalues meet (an all-zero map, for one), so no training loss is
  built on it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from egl._check import check_flag, check_shape
from egl.explainers._gradient_free import GradientFreeCAM
from egl.explainers.grad_cam import CAMParts, position_map, weight_dtype

__all__ = ["EigenCAM", "eigen_cam", "principal_projection"]


def principal_projection(a: Tensor, *, center: bool = False) -> Tensor:
    """Each image's activations projected on their first principal direction.

    Args:
        a: activations ``[B, C, h, w]``.
        center: subtract each channel's mean over the positions first.

    Returns:
        ``[B, 1, h, w]`` in float32 at least, signed to agree with the total activation
        (``Σ_i p_i s_i >= 0``, ``s_i`` the channels' sum at position ``i``); NaN for an image
        whose activations are not finite (normalised by the explainer, all zeros, as
        Grad-CAM's map of a diverged model is).
    """
    a = check_shape(a, "B C H W", "egl.explainers.eigen_cam.principal_projection", "a")
    m = a.detach().to(dtype=weight_dtype(a)).flatten(2).transpose(1, 2)  # [B, hw, C]
    bad = ~torch.isfinite(m).flatten(1).all(dim=1)  # an image with NaN/inf activations (a diverged model):
    m = torch.where(bad[:, None, None], 0.0, m)  # decomposed as zeros (eigh would raise), answered NaN below
    scale = m.abs().amax(dim=(1, 2), keepdim=True).clamp(min=torch.finfo(m.dtype).tiny)
    m = m / scale  # (huge finite activations would overflow the Gram matrix; the projection scales back)
    total = m.sum(dim=2)  # [B, hw]: the sign's reference
    if center:
        m = m - m.mean(dim=1, keepdim=True)
    n_pos, n_ch = m.shape[1], m.shape[2]
    if n_pos <= n_ch:  # A Aᵀ = U S² Uᵀ: A v_1 = s_1 u_1
        vals, vecs = torch.linalg.eigh(m @ m.transpose(1, 2))
        proj = vecs[..., -1] * vals[..., -1:].clamp(min=0).sqrt()
    else:  # Aᵀ A = V S² Vᵀ
        vecs = torch.linalg.eigh(m.transpose(1, 2) @ m)[1]
        proj = (m @ vecs[..., -1:]).squeeze(-1)
    sign = torch.where((proj * total).sum(dim=1, keepdim=True) < 0, -1.0, 1.0).to(proj.dtype)
    proj = torch.where(bad[:, None], float("nan"), proj * sign * scale[:, :, 0])
    return proj.reshape(a.shape[0], 1, *a.shape[-2:])


class EigenCAM(GradientFreeCAM):
    """Eigen-CAM bound to a model and a target layer.

    Args:
        model, layer, upsample, normalize, relu, backend: as :class:`~egl.explainers.GradCAM`
            (one forward pass to the activations, no backward).
        center: subtract each channel's mean over the positions before the decomposition
            (``False``, the paper's).

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` (or ``B 1 h w`` with ``upsample=False``).

    Example:
        >>> import timm, torch
        >>> from egl.explainers import EigenCAM
        >>> model = timm.create_model("test_resnet", num_classes=5).eval()
        >>> with EigenCAM(model, layer="layer3") as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64))
        >>> maps.shape
        torch.Size([2, 1, 64, 64])
    """

    name = "eigen_cam"  # (inference only: GradientFreeCAM refuses create_graph=True)
    class_free = True  # the same map whatever the target

    def __init__(self, model: nn.Module, layer: str = "auto", *, upsample: bool = True, normalize: bool = True,
                 relu: bool = True, center: bool = False, backend: str = "auto") -> None:
        super().__init__(model, layer, upsample=upsample, normalize=normalize, relu=relu, backend=backend)
        self.center = check_flag(center, f"egl.explainers.{type(self).__name__}", "center")

    def parts(self, x: Tensor, acts: Tensor, t: Tensor) -> CAMParts:
        return position_map(principal_projection(acts, center=self.center))


def eigen_cam(model: nn.Module, x: Tensor, target: Any = None, *, layer: str = "auto", upsample: bool = True,
              normalize: bool = True, relu: bool = True, center: bool = False) -> Tensor:
    """Functional Eigen-CAM: ``EigenCAM(model, layer, ...)(x, target)`` (``target`` is checked,
    and changes nothing: the map has no class).

    Example:
        >>> import timm, torch
        >>> from egl.explainers import eigen_cam
        >>> model = timm.create_model("test_resnet", num_classes=5).eval()
        >>> eigen_cam(model, torch.randn(2, 3, 64, 64), layer="layer3", upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """
    return EigenCAM(model, layer, upsample=upsample, normalize=normalize, relu=relu, center=center)(x, target)
