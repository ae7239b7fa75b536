"""Alignment losses (saliency vs mask) and ALIGN's masker objective."""

from egl.losses._reduction import reduce
from egl.losses.base import AlignmentLoss
from egl.losses.bce import BCEAlignmentLoss, bce_alignment
from egl.losses.energy_outside import EnergyOutsideLoss, energy_outside
from egl.losses.l1 import L1AlignmentLoss, l1_alignment
from egl.losses.masker_dist import MaskerDistLoss, masker_dist, masker_dist_loss
from egl.losses.rrr import RRRLoss, rrr_penalty

__all__ = [
    "AlignmentLoss",
    "bce_alignment",
    "BCEAlignmentLoss",
    "l1_alignment",
    "L1AlignmentLoss",
    "masker_dist",
    "masker_dist_loss",
    "MaskerDistLoss",
    "energy_outside",
    "EnergyOutsideLoss",
    "rrr_penalty",
    "RRRLoss",
    "reduce",
]
