"""egl's own components, registered through the same hooks a third-party plugin uses.

Found through the entry point ``builtins = "egl._builtins"`` of the ``egl`` group.
"""

from __future__ import annotations

from typing import Any

from egl.hookspecs import hookimpl


@hookimpl
def egl_register_explainers() -> list[Any]:
    from egl.explainers import (CaptumExplainer, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, InputGradient,
                                LayerCAM, ScoreCAM, SmoothedExplainer, XGradCAM)

    return [GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM, EigenCAM, ScoreCAM, InputGradient,
            CaptumExplainer, SmoothedExplainer]


@hookimpl
def egl_register_maskers() -> list[Any]:
    from egl.maskers import GrayscaleMasker, GroundTruthMasker, LearnedMasker, SAMMasker

    return [LearnedMasker, GrayscaleMasker, GroundTruthMasker, SAMMasker]


@hookimpl
def egl_register_alignment_losses() -> list[Any]:
    from egl.losses import BCEAlignmentLoss, EnergyOutsideLoss, L1AlignmentLoss, RRRLoss

    return [BCEAlignmentLoss, L1AlignmentLoss, EnergyOutsideLoss, RRRLoss]


@hookimpl
def egl_register_regularizers() -> list[Any]:
    from egl.regularizers import MixupConsistency, Smoothness, Sparsity

    return [Sparsity, Smoothness, MixupConsistency]


@hookimpl
def egl_register_recipes() -> list[Any]:
    from egl.recipes import ALIGN, CORAL, DRE, ERM, IRM, MMD, SD, SGT, GroupDRO, Mixup, SGDrop, VREx

    return [ALIGN, ERM, IRM, Mixup, SGT, SGDrop, DRE, GroupDRO, VREx, CORAL, MMD, SD]
