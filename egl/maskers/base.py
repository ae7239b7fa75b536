"""The masker interface: ``masker(x, mask=None) -> [B, 1, H, W]`` in [0, 1] at the input's resolution.

Class attributes tell a recipe how to treat a masker:

* ``trainable`` -- has parameters that a masker phase updates (``learned``).
* ``needs_mask`` -- reads masks that come with the data (``ground_truth``); the data
  must then carry a ``mask``.
* ``recomputable`` -- running the forward again gives the same output and has no side effect
  beyond BatchNorm statistics (no caches, no Python or NumPy random numbers, no other model):
  ALIGN may then recompute its activations in the backward instead of keeping them
  (``masker_checkpoint="auto"``). Third-party maskers default to False.

A frozen masker with expensive masks (``sam``) computes them once per image and caches
them on disk (see :class:`egl.maskers.SAMMasker`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from egl._arguments import record_subclass_arguments

__all__ = ["Masker"]


class Masker(nn.Module):
    """Base class of maskers."""

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    needs_mask: ClassVar[bool] = False
    recomputable: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        record_subclass_arguments(cls)  # constructor arguments, for a recipe's config()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
