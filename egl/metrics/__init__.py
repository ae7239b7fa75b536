"""Evaluation metrics, one family per module (see docs/metrics.md).

- :mod:`~egl.metrics.classification`: ``accuracy``, macro one-vs-rest ``auc``.
- :mod:`~egl.metrics.faithfulness`: ERASER sufficiency and comprehensiveness (AOPC) of
  saliency, batched through the model (DeYoung et al., ACL 2020).
- :mod:`~egl.metrics.deletion_insertion`: RISE ``deletion`` and ``insertion`` curves and their
  areas, batched through the model (Petsiuk et al., BMVC 2018).
- :mod:`~egl.metrics.imputation`: ROAD's noisy linear imputation (Rong et al., ICML 2022), the
  ``"noisy_linear"`` baseline of both families above; :mod:`~egl.metrics.road`: ROAD's MoRF,
  LeRF and combined scores with it.
- :mod:`~egl.metrics.localization`: energy pointing game, pointing game and top-|mask|
  IoU of saliency (or a masker's output) against ground-truth masks.
- :mod:`~egl.metrics.randomization`: Adebayo et al.'s sanity check, the model parameter
  randomisation test (cascading or independent; Spearman and SSIM against the trained maps).
- :mod:`~egl.metrics.sensitivity`: max- and average-sensitivity of maps under small input noise
  (Yeh et al., NeurIPS 2019).
- :mod:`~egl.metrics.background_swap`: accuracy with objects moved onto backgrounds of their
  class and of other classes, and how often predictions follow the background (Xiao et al.,
  ICLR 2021), from any images with foreground masks.
- :mod:`~egl.metrics.shortcut`: how often predictions follow a spurious feature; worst-group
  accuracy over (class, spurious feature) groups.

Localisation scores say where a map points, not what the model decides by: report them
beside accuracy and the shortcut rate.

Example:
    >>> import torch
    >>> from egl.metrics import accuracy, localization
    >>> float(accuracy(torch.tensor([[1.0, 0.0]]), torch.tensor([0])))
    1.0
"""

from egl.metrics.background_swap import BackgroundSwapResult, background_swap, remove_objects
from egl.metrics.classification import accuracy, auc
from egl.metrics.deletion_insertion import CurveResult, deletion, insertion
from egl.metrics.faithfulness import BASELINES, DEFAULT_KS, FaithfulnessResult, faithfulness
from egl.metrics.imputation import noisy_linear_imputation
from egl.metrics.localization import (
    LocalizationResult,
    energy_pointing_game,
    localization,
    pointing_game,
    top_k_iou,
)
from egl.metrics.randomization import (
    RandomizationResult,
    map_similarity,
    parameter_randomization,
    randomization_layers,
)
from egl.metrics.road import ROAD_PERCENTILES, RoadResult, road
from egl.metrics.sensitivity import SensitivityResult, sensitivity
from egl.metrics.shortcut import shortcut_rate, worst_group_accuracy

__all__ = [
    "accuracy",
    "auc",
    "background_swap",
    "remove_objects",
    "BackgroundSwapResult",
    "faithfulness",
    "FaithfulnessResult",
    "deletion",
    "insertion",
    "CurveResult",
    "BASELINES",
    "DEFAULT_KS",
    "noisy_linear_imputation",
    "road",
    "RoadResult",
    "ROAD_PERCENTILES",
    "localization",
    "LocalizationResult",
    "energy_pointing_game",
    "pointing_game",
    "top_k_iou",
    "parameter_randomization",
    "RandomizationResult",
    "randomization_layers",
    "map_similarity",
    "sensitivity",
    "SensitivityResult",
    "shortcut_rate",
    "worst_group_accuracy",
]
