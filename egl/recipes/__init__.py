"""Recipes: ALIGN and the baselines, composed from registered components.

``from egl import recipes; recipes.align(model).fit(loader, steps=1000)``. Every recipe
is also registered (``egl.create("recipe", "align", model)``), so plugins can add their own.
The remaining baselines of the paper (IRM, Mixup, SGT, SGDrop, DRE) are not yet here.
"""

from egl.recipes.align import ALIGN, align
from egl.recipes.base import NonFiniteLossError, Phase, Recipe
from egl.recipes.batch import Batch, as_batch
from egl.recipes.erm import ERM, erm
from egl.recipes.sgdrop import SGDrop, sgdrop
from egl.recipes.sgt import SGT, sgt

__all__ = ["Recipe", "Phase", "Batch", "as_batch", "NonFiniteLossError", "ALIGN", "align", "ERM", "erm", "SGT", "sgt", "SGDrop", "sgdrop"]
