"""The masker interface: ``masker(x, mask=None) -> [B, 1, H, W]`` in [0, 1] at the input's resolution.

Class attributes tell a recipe how to treat a masker:

* ``trainable`` -- has parameters that a masker phase updates (``learned``).
* ``needs_mask`` -- reads masks that come with the data (``ground_truth``); the data
  must then carry a ``mask``.

A frozen masker with expensive masks (``sam``) computes them once per image and caches
them on disk (see :class:`egl.maskers.SAMMasker`).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

__all__ = ["Masker"]


class Masker(nn.Module):
    """Base class of maskers."""

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = False
    needs_mask: ClassVar[bool] = False

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError
