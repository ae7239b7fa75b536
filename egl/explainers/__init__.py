"""Explainers: saliency maps ``[B, 1, H, W]`` for a batch and per-sample targets.

Each has a function form (``grad_cam(model, x, target)``) and a class that binds the
model (``with GradCAM(model) as cam: cam(x, target)``).
"""

from egl.explainers._postprocess import minmax_normalize
from egl.explainers.base import Explainer, Explanation
from egl.explainers.captum import CaptumExplainer
from egl.explainers.class_maps import class_maps
from egl.explainers.eigen_cam import EigenCAM, eigen_cam
from egl.explainers.grad_cam import GradCAM, grad_cam
from egl.explainers.grad_cam_plus_plus import GradCAMPlusPlus, grad_cam_plus_plus
from egl.explainers.graphed import GraphedExplainer
from egl.explainers.hires_cam import HiResCAM, hires_cam
from egl.explainers.input_gradient import InputGradient, input_gradient
from egl.explainers.layer_cam import LayerCAM, layer_cam
from egl.explainers.score_cam import ScoreCAM, score_cam
from egl.explainers.smoothed import SmoothedExplainer, smoothed
from egl.explainers.xgrad_cam import XGradCAM, xgrad_cam

__all__ = [
    "Explainer",
    "Explanation",
    "GradCAM",
    "grad_cam",
    "GradCAMPlusPlus",
    "grad_cam_plus_plus",
    "HiResCAM",
    "hires_cam",
    "LayerCAM",
    "layer_cam",
    "XGradCAM",
    "xgrad_cam",
    "EigenCAM",
    "eigen_cam",
    "ScoreCAM",
    "score_cam",
    "GraphedExplainer",
    "InputGradient",
    "input_gradient",
    "CaptumExplainer",
    "SmoothedExplainer",
    "smoothed",
    "class_maps",
    "minmax_normalize",
]
