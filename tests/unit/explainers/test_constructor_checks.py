"""Explainer options are checked when the explainer is built: strict True/False switches (a
string such as "false" read as True), and GradCAM's backend before a whole forward pass."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.explainers import CaptumExplainer, GradCAM, InputGradient

BUILD = {
    ("GradCAM", "upsample"): lambda m, v: GradCAM(m, upsample=v),
    ("GradCAM", "normalize"): lambda m, v: GradCAM(m, normalize=v),
    ("GradCAM", "relu"): lambda m, v: GradCAM(m, relu=v),
    ("GradCAM", "detach_weights"): lambda m, v: GradCAM(m, detach_weights=v),
    ("InputGradient", "absolute"): lambda m, v: InputGradient(m, absolute=v),
    ("InputGradient", "normalize"): lambda m, v: InputGradient(m, normalize=v),
    ("CaptumExplainer", "absolute"): lambda m, v: CaptumExplainer(m, "Saliency", absolute=v),
}


@pytest.mark.parametrize("value", ["false", 0, None])
@pytest.mark.parametrize("cls,arg", list(BUILD))
def test_a_switch_must_be_true_or_false(cls: str, arg: str, value: object) -> None:
    with pytest.raises(egl.InputError, match=rf"egl.explainers.{cls}: '{arg}' expected True or False"):
        BUILD[(cls, arg)](make_model("test_resnet"), value)


def test_upsample_false_as_a_string_no_longer_upsamples() -> None:
    """GradCAM(upsample="false") returned a full-size map: bool("false") is True."""
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 64, 64)
    assert GradCAM(model, upsample=False)(x).shape == (2, 1, 2, 2)
    with pytest.raises(egl.InputError, match="'upsample' expected True or False, got 'false'"):
        GradCAM(model, upsample="false")


def test_an_unknown_backend_is_named_when_the_explainer_is_built() -> None:
    with pytest.raises(egl.InputError, match=r"egl.explainers.GradCAM: 'backend' expected one of"):
        GradCAM(make_model("test_resnet"), backend="cuda-fast")


def test_irm_rescale_must_be_true_or_false() -> None:
    with pytest.raises(egl.InputError, match=r"'rescale' expected True or False"):
        recipes.irm(make_model("test_resnet", eval_mode=False), rescale="no")
