"""Right for the right reasons (Ross, Hughes & Doshi-Velez, IJCAI 2017): penalise input
gradients of the summed log-probabilities outside the mask.

``L = Σ_{c,i,j} (1 − M[i,j]) · (∂ Σ_k log p_k(x) / ∂x[c,i,j])²`` per sample, then the batch
mean. Ross et al. sum over the input (their λ = 1000 on MNIST scale with it); we keep
the sum per sample, so weights transfer. Needs double backprop through the whole
network (``create_graph=True``): it costs about three times a plain training step.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from egl._amp import inner_grad
from egl._check import check_logits, check_model_dtype, check_same_batch, check_shape, describe, fail
from egl._masks import as_mask, check_aspect, resize_mask
from egl._transfer import upload
from egl.explainers.base import double_backward_ready, explained_model
from egl.kernels.subpixel_dgrad import subpixel_input_grads
from egl.losses._reduction import reduce
from egl.losses.base import AlignmentLoss

__all__ = ["rrr_penalty", "RRRLoss"]


def rrr_penalty(model: nn.Module, x: Tensor, mask: Tensor, *, reduction: str = "mean") -> Tensor:
    """Squared input gradients of ``Σ_k log p_k(x)`` outside ``mask``, summed per sample.

    Differentiable with respect to the model's parameters (double backprop).

    Shape:
        x: ``B C H W``; mask: ``B 1 H W`` or ``B H W`` in [0, 1] (resized to x).

    Raises:
        InputError: ``model`` not an ``nn.Module``, ``x`` or ``mask`` of the wrong shape, ``x`` not of
            the model's dtype, or a mask outside [0, 1].
        UnsupportedModelError: the model does not return ``[B, K]`` logits.
    """
    fn = "egl.losses.rrr_penalty"
    if not isinstance(model, nn.Module):
        raise fail(fn, "model", "a torch.nn.Module classifier returning [B, K] logits", describe(model),
                   "Pass the classifier itself (the penalty differentiates its parameters)")
    model = explained_model(model)  # torch.compile: no double backward; its eager model
    x = check_shape(x, "B C H W", fn, "x")
    check_model_dtype(model, x, fn, "x")
    m = as_mask(mask, fn, "mask")
    check_same_batch(fn, x=x, mask=m)
    check_aspect(tuple(m.shape[-2:]), tuple(x.shape[-2:]), fn, "mask", "the images")
    m = resize_mask(upload(m, x.device, x.dtype), tuple(x.shape[-2:]))
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad(), double_backward_ready(True):
        with subpixel_input_grads(model):  # the stem's input gradient in a faster form
            logits = check_logits(model(leaf), x.shape[0], fn)  # (a dense map: log_softmax over its channels)
            logp = torch.log_softmax(logits, dim=1)
        (g,) = inner_grad(logp.float().sum(), leaf, create_graph=True)  # float32 sum: no overflow
    per_sample = ((1.0 - m) * g.pow(2)).flatten(1).sum(1)
    return reduce(per_sample, reduction, fn)


class RRRLoss(AlignmentLoss):
    """Module form of :func:`rrr_penalty`; ``inputs = "batch"``: called as ``loss(model, x, mask)``."""

    name = "rrr"
    inputs: ClassVar[str] = "batch"

    def forward(self, model: nn.Module, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return rrr_penalty(model, x, mask, reduction=self.reduction)
