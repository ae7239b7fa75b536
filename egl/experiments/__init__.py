"""Experiments: configs, data sources, training and evaluation grids, tables and figures."""

from egl.experiments.config import DEFAULTS, apply_overrides, load_config
from egl.experiments.evaluate import evaluate, predict
from egl.experiments.mask_quality import blur_outside, mask_quality
from egl.experiments.models import build_model, load_weights
from egl.experiments.runner import run, train_method
from egl.experiments.sources import Source, load_source

__all__ = [
    "DEFAULTS", "load_config", "apply_overrides", "evaluate", "predict", "mask_quality", "blur_outside",
    "build_model", "load_weights", "run", "train_method", "Source", "load_source",
]
