"""Input-gradient saliency (Simonyan et al., "Deep Inside Convolutional Networks", 2014).

``saliency = reduce_c |d s_y / d x|``: the gradient of the target logit with respect to
the input, reduced over channels. SGT (Ismail et al., NeurIPS 2021) ranks pixels by it.

Defaults (ours, configurable): absolute value, then the channel mean; normalised per
sample to [0, 1]. ``absolute=False`` keeps the sign (SGT's code ranks the signed value).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from egl._amp import inner_grad
from egl._check import batch_of_one, check_choice, check_flag, check_logits
from egl.explainers._postprocess import minmax_normalize
from egl.explainers.base import Explainer, Explanation, double_backward_ready, targets
from egl.kernels.subpixel_dgrad import subpixel_input_grads

__all__ = ["InputGradient", "input_gradient"]


class InputGradient(Explainer):
    """Gradient of the target logit with respect to the input pixels.

    Args:
        model: classifier returning logits ``[B, K]``.
        absolute: take ``|grad|`` before reducing channels (default True).
        reduce: ``"mean"`` (default) or ``"sum"`` over channels, or ``"none"`` to keep ``[B, C, H, W]``.
        normalize: per-sample min-max to [0, 1] (default True).

    The map is differentiable with respect to the model's parameters when
    ``create_graph=True`` (double backprop); the input is treated as a fresh leaf.

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` (``B C H W`` with ``reduce="none"``).
    """

    name = "input_gradient"

    def __init__(self, model: nn.Module, *, absolute: bool = True, reduce: str = "mean",
                 normalize: bool = True, upsample: bool = True) -> None:
        super().__init__(model, upsample=upsample, normalize=normalize)
        check_choice(reduce, ("mean", "sum", "none"), "egl.explainers.InputGradient", "reduce")
        self.absolute = check_flag(absolute, "egl.explainers.InputGradient", "absolute")
        self.reduce = reduce

    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        """Input-gradient saliency and logits for ``x`` (``target=None``: predicted class)."""
        with batch_of_one("egl.explainers.input_gradient", "x"):
            return self._explain(x, target, create_graph)

    def _explain(self, x: Tensor, target: Any, create_graph: bool) -> Explanation:
        fn = "egl.explainers.input_gradient"
        x = self._check_input(x, create_graph)
        tgt = targets(target, x.shape[0], fn, x.device)
        # under create_graph, an x that is itself computed (a learnable stage before the model) stays
        # in the graph, as Grad-CAM's does: the map's and the logits' gradients reach what made x
        leaf = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
        with torch.enable_grad(), double_backward_ready(create_graph):
            with subpixel_input_grads(self.model):  # the stem's input gradient in a faster form
                logits = check_logits(self.model(leaf), x.shape[0], fn)
            t = logits.detach().argmax(1) if tgt is None else tgt.index(logits.shape[1], fn, defer=True)
            g = inner_grad(logits.gather(1, t[:, None]).float().sum(), leaf, create_graph=create_graph,
                           retain_graph=create_graph)[0]
        with torch.set_grad_enabled(create_graph):
            sal = g.abs() if self.absolute else g
            if self.reduce == "mean":
                sal = sal.mean(dim=1, keepdim=True)
            elif self.reduce == "sum":
                sal = sal.sum(dim=1, keepdim=True)
            if self.normalize:
                sal = minmax_normalize(sal)
        if tgt is not None:
            tgt.settle()  # the target range, read once the whole call is queued
        if not create_graph:
            sal, logits = sal.detach(), logits.detach()
        return Explanation(sal, logits)


def input_gradient(model: nn.Module, x: Tensor, target: Any = None, *, create_graph: bool = False,
                   absolute: bool = True, reduce: str = "mean", normalize: bool = True) -> Tensor:
    """Functional form of :class:`InputGradient`; returns ``[B, 1, H, W]``."""
    return InputGradient(model, absolute=absolute, reduce=reduce, normalize=normalize)(
        x, target, create_graph=create_graph)
