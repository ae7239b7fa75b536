"""Data: the built-in synthetic shortcut benchmark, DomainBed-layout folders, images listed in a
CSV table (Waterbirds' metadata.csv and the like), training augmentation that moves masks with
their images, partial annotation (the masks of a fraction of the images kept), a frozen masker's
masks carried by the items (so augmentation moves them), masks degraded like cheap annotations
(boxes, loose or tight outlines, offsets), labels permuted for the data randomisation test and
group-balanced sampling."""

from egl.data.augment import PRESETS, Augment, Augmented
from egl.data.domain_folder import DomainFolder
from egl.data.group_balance import group_balanced_sampler, item_groups, item_labels
from egl.data.image_csv import ImageCSV
from egl.data.masked_by import MaskedBy
from egl.data.noisy_masks import NoisyMasks, degrade_mask
from egl.data.partial_masks import PartialMasks
from egl.data.permuted_labels import PermutedLabels
from egl.data.synthetic import SPLITS, SyntheticConfig, SyntheticShortcuts, build

__all__ = ["SyntheticConfig", "SyntheticShortcuts", "build", "SPLITS", "DomainFolder", "ImageCSV", "Augment",
           "Augmented", "PRESETS", "PartialMasks", "MaskedBy", "NoisyMasks", "degrade_mask", "PermutedLabels",
           "group_balanced_sampler", "item_groups", "item_labels"]
