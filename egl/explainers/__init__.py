"""Explainers: saliency maps ``[B, 1, H, W]`` for a batch and per-sample targets.

Each has a function form (``grad_cam(model, x, target)``) and a class that binds the
model (``with GradCAM(model) as cam: cam(x, target)``).
"""

from egl.explainers._postprocess import minmax_normalize
from egl.explainers.base import Explainer, Explanation
from egl.explainers.captum import CaptumExplainer
from egl.explainers.class_maps import class_maps
from egl.explainers.grad_cam import GradCAM, grad_cam
from egl.explainers.graphed import GraphedExplainer
from egl.explainers.input_gradient import InputGradient, input_gradient

__all__ = [
    "Explainer",
    "Explanation",
    "GradCAM",
    "grad_cam",
    "GraphedExplainer",
    "InputGradient",
    "input_gradient",
    "CaptumExplainer",
    "class_maps",
    "minmax_normalize",
]
