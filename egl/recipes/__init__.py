"""Recipes: ALIGN and the baselines, composed from registered components.

``from egl import recipes; recipes.align(model).fit(loader, steps=1000)``. Every recipe
is also registered (``egl.create("recipe", "align", model)``), so plugins can add their own.
Baselines of the paper: ``erm``, ``irm``, ``mixup``, ``sgt``, ``sgdrop``, ``dre``; ALIGN's
ablations are arguments of ``align`` (``align_weight=0``, ``masker="grayscale"``). Beyond the
paper: ``group_dro`` (Sagawa et al., group labels instead of masks), and DomainBed's ``vrex``,
``coral`` and ``mmd`` (domain-invariance penalties) and ``sd`` (spectral decoupling).
"""

from egl.recipes.align import ALIGN, align
from egl.recipes.base import NonFiniteLossError, Phase, Recipe
from egl.recipes.batch import Batch, as_batch
from egl.recipes.dre import DRE, dre
from egl.recipes.erm import ERM, erm
from egl.recipes.feature_matching import CORAL, MMD, coral, mmd
from egl.recipes.freeze_bn import freeze_batchnorm, unfreeze_batchnorm
from egl.recipes.group_dro import GroupDRO, group_dro
from egl.recipes.irm import IRM, irm
from egl.recipes.mixup import Mixup, mixup
from egl.recipes.sgdrop import SGDrop, sgdrop
from egl.recipes.sd import SD, sd
from egl.recipes.sgt import SGT, sgt
from egl.recipes.vrex import VREx, vrex

__all__ = [
    "Recipe", "Phase", "Batch", "as_batch", "NonFiniteLossError",
    "ALIGN", "align", "ERM", "erm", "IRM", "irm", "Mixup", "mixup",
    "SGT", "sgt", "SGDrop", "sgdrop", "DRE", "dre", "GroupDRO", "group_dro", "VREx", "vrex",
    "CORAL", "coral", "MMD", "mmd", "SD", "sd", "freeze_batchnorm",
    "unfreeze_batchnorm",
]
