"""Gradient × input saliency (Shrikumar et al., "Not Just a Black Box: Learning Important
Features Through Propagating Activation Differences", 2016, arXiv:1605.01713).

``saliency = sum_c |x ⊙ d s_y / d x|``: the input gradient of the target logit, weighted
by the input itself, so flat or dark regions with large gradients count less than in
plain input-gradient saliency. Normalised per sample to [0, 1] by default.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from egl.explainers import Explainer, Explanation, minmax_normalize
from egl.explainers.base import as_targets, check_target_range, double_backward_ready

__all__ = ["GradientXInput", "gradient_x_input"]


class GradientXInput(Explainer):
    """``|x ⊙ ∂s_y/∂x|`` summed over channels.

    Args:
        model: classifier returning logits ``[B, K]``.
        normalize: per-sample min-max to [0, 1] (default True).
        upsample: accepted for symmetry with other explainers; maps are already at input size.

    With ``create_graph=True`` the map is differentiable with respect to the model's
    parameters (double backprop), so it can sit inside a training loss; the input is
    treated as a constant.

    Shape:
        x: ``B C H W``; returns ``B 1 H W``.

    Example:
        >>> import egl, torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),
        ...                             torch.nn.Flatten())
        >>> egl.create("explainer", "gradient_x_input", model)(torch.randn(2, 3, 8, 8), 0).shape
        torch.Size([2, 1, 8, 8])
    """

    name = "gradient_x_input"

    def __init__(self, model: nn.Module, *, normalize: bool = True, upsample: bool = True) -> None:
        super().__init__(model, upsample=upsample, normalize=normalize)

    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        """Saliency and logits for ``x`` (``target=None``: the predicted class)."""
        fn = "egl_plugin_template.gradient_x_input"
        x = self._check_input(x, create_graph)
        tgt = as_targets(target, x.shape[0], fn, x.device)
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad(), double_backward_ready(create_graph):  # ViTs: no fused attention
            logits = self.model(leaf)
            t = logits.detach().argmax(1) if tgt is None else check_target_range(tgt, logits.shape[1], fn)
            grad = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), leaf,
                                       create_graph=create_graph, retain_graph=create_graph)[0]
        with torch.set_grad_enabled(create_graph):
            sal = (grad * x.detach()).abs().sum(dim=1, keepdim=True)
            if self.normalize:
                sal = minmax_normalize(sal)
        if not create_graph:
            sal, logits = sal.detach(), logits.detach()
        return Explanation(sal, logits)


def gradient_x_input(model: nn.Module, x: Tensor, target: Any = None, *, create_graph: bool = False,
                     normalize: bool = True) -> Tensor:
    """Functional form of :class:`GradientXInput`; returns ``[B, 1, H, W]``."""
    return GradientXInput(model, normalize=normalize)(x, target, create_graph=create_graph)
