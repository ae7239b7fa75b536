"""Maskers: modules producing ``[B, 1, H, W]`` masks in [0, 1] at the input's resolution."""

from egl.maskers.base import Masker
from egl.maskers.grayscale import GrayscaleMasker
from egl.maskers.ground_truth import GroundTruthMasker
from egl.maskers.learned import LearnedMasker
from egl.maskers.sam import SAMMasker

__all__ = ["Masker", "LearnedMasker", "GrayscaleMasker", "GroundTruthMasker", "SAMMasker"]
