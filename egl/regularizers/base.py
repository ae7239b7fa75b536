"""The regularizer interface.

Two kinds of input, declared by ``inputs``:

* ``"mask"`` -- a penalty on a mask or map: ``reg(mask) -> Tensor`` (``sparsity``, ``smoothness``).
* ``"explanation"`` -- a penalty that runs the model through an explainer:
  ``reg(explainer, x, target, saliency=None) -> Tensor`` (``mixup_consistency``).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from egl._arguments import record_subclass_arguments, records_arguments
from egl._check import check_choice
from egl.losses._reduction import REDUCTIONS

__all__ = ["Regularizer"]


class Regularizer(nn.Module):
    """Base class of regularizers: hyperparameters in the module, math in a function."""

    name: ClassVar[str] = ""
    inputs: ClassVar[str] = "mask"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        record_subclass_arguments(cls)  # constructor arguments, for a recipe's config()

    @records_arguments
    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        check_choice(reduction, REDUCTIONS, f"egl.regularizers.{type(self).__name__}", "reduction")
        self.reduction = reduction

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
