"""The saliency metrics' explainer: any registered name, ``layer`` for the Grad-CAM family."""

from __future__ import annotations

import pytest
from _helpers import make_model

import egl
from egl.experiments.evaluate import saliency_explainer
from egl.explainers import GradCAMPlusPlus, InputGradient, LayerCAM


def test_a_grad_cam_explainer_takes_the_layer() -> None:
    model = make_model("test_resnet")
    cam = saliency_explainer(model, "layer_cam", "layer3")
    assert type(cam) is LayerCAM and cam.target_layer == "layer3"
    assert type(saliency_explainer(model, "grad_cam_plus_plus")) is GradCAMPlusPlus


def test_another_explainer_refuses_a_layer_and_an_unknown_name_is_named() -> None:
    model = make_model("test_resnet")
    assert type(saliency_explainer(model, "input_gradient")) is InputGradient
    with pytest.raises(egl.InputError, match="'layer' expected 'auto' with explainer='input_gradient'"):
        saliency_explainer(model, "input_gradient", "layer3")
    with pytest.raises(egl.ComponentNotFoundError,
                       match="^egl.experiments.evaluate: 'explainer' expected a registered explainer name, got 'layercam'"
                             r"\. Did you mean 'layer_cam'"):
        saliency_explainer(model, "layercam")
