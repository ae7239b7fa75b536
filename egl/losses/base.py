"""The alignment-loss interface: ``loss(saliency, mask)``, minimal when they agree."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from egl._arguments import record_subclass_arguments, records_arguments
from egl._check import check_choice, check_range, check_same_batch, check_shape
from egl._masks import as_mask, check_aspect, resize_mask
from egl._transfer import upload
from egl.losses._reduction import REDUCTIONS

__all__ = ["AlignmentLoss", "prepare"]


def prepare(saliency: Tensor, mask: Tensor, fn: str) -> tuple[Tensor, Tensor]:
    """Validate ``saliency [B, 1, h, w]`` in [0, 1] and a mask; resize the mask to ``(h, w)``.

    See :func:`egl._masks.resize_mask` for the resizing rule.
    """
    saliency = check_shape(saliency, "B 1 H W", fn, "saliency")
    check_range(saliency.detach(), 0.0, 1.0, fn, "saliency",
                "Normalise saliency to [0, 1] (explainers do so with normalize=True)")
    m = as_mask(mask, fn, "mask")
    check_same_batch(fn, saliency=saliency, mask=m)
    dt = torch.promote_types(saliency.dtype, torch.float32)  # a 16-bit mask would round first (0.3 -> 0.30078)
    check_aspect(tuple(m.shape[-2:]), tuple(saliency.shape[-2:]), fn, "mask", "the saliency")
    m = resize_mask(upload(m, saliency.device, dt), tuple(saliency.shape[-2:]))
    return saliency, m


class AlignmentLoss(nn.Module):
    """Base class: stores hyperparameters, calls the functional form in ``forward``.

    ``inputs`` says what the loss is called with:

    * ``"saliency"`` (default): ``loss(saliency [B, 1, h, w] in [0, 1], mask)``;
    * ``"class_maps"``: ``loss(maps [B, K, h, w], mask)`` with the signed maps of every class;
    * ``"batch"``: ``loss(model, x, mask)``, for losses that differentiate the model themselves.

    Args:
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample ``[B]``).
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[str] = "saliency"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        record_subclass_arguments(cls)  # constructor arguments, for a recipe's config()

    @records_arguments
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_choice(reduction, REDUCTIONS, f"egl.losses.{type(self).__name__}", "reduction")
        self.reduction = reduction

    def forward(self, saliency: Tensor, mask: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
