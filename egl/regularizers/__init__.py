"""Regularizers: mask penalties (``sparsity``, ``smoothness``) and the explanation
regularizer of ALIGN (``mixup_consistency``)."""

from egl.regularizers.base import Regularizer
from egl.regularizers.mixup_consistency import MixupConsistency, MixupTerms, mixup_consistency, same_class_pairs
from egl.regularizers.smoothness import Smoothness, smoothness
from egl.regularizers.sparsity import Sparsity, sparsity

__all__ = [
    "Regularizer",
    "sparsity",
    "Sparsity",
    "smoothness",
    "Smoothness",
    "mixup_consistency",
    "MixupConsistency",
    "MixupTerms",
    "same_class_pairs",
]
