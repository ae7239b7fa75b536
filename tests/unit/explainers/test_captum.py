"""The captum adapter: any captum.attr method behind the egl explainer contract."""

from __future__ import annotations

import warnings

import pytest
import torch
from _helpers import NUM_CLASSES, make_model
from captum.attr import IntegratedGradients, LayerGradCam, Saliency
from torch import Tensor, nn

from egl.errors import InputError
from egl.explainers import CaptumExplainer, grad_cam, input_gradient

TARGETS = [0, 3, 1, 4]


def hook_count(model: nn.Module) -> int:
    return sum(len(getattr(m, a)) for m in model.modules()
               for a in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return make_model("test_resnet")


def test_saliency_by_name_and_by_class(resnet: nn.Module, images: Tensor) -> None:
    by_name = CaptumExplainer(resnet, "Saliency")
    assert by_name.method_cls is Saliency
    out = by_name.explain(images, TARGETS)
    sal = out.saliency
    assert sal.shape == (4, 1, 64, 64) and sal.dtype == torch.float32 and sal.device == images.device
    assert sal.min() >= 0 and sal.max() <= 1 and not sal.requires_grad
    assert torch.allclose(out.logits, resnet(images), atol=1e-5)
    assert torch.equal(CaptumExplainer(resnet, Saliency)(images, TARGETS), sal)
    # captum's Saliency is |grad| per channel; summed over channels it is egl's input gradient with reduce="sum"
    assert torch.allclose(sal, input_gradient(resnet, images, TARGETS, reduce="sum"), atol=1e-5)


def test_input_untouched_and_no_warning(resnet: nn.Module, images: Tensor) -> None:
    x = images.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CaptumExplainer(resnet, "Saliency")(x, TARGETS)
    assert not x.requires_grad and x.grad is None and torch.equal(x, images)


def test_default_target_is_the_prediction(resnet: nn.Module, images: Tensor) -> None:
    cap = CaptumExplainer(resnet)
    assert torch.equal(cap(images), cap(images, resnet(images).argmax(1)))


@pytest.mark.parametrize("layer", ["layer4", "auto"])
def test_layer_grad_cam_equals_egl_grad_cam(layer: str, images: Tensor) -> None:
    model = make_model("test_resnet", output_stride=16)  # 4x4 maps at 64 px
    cap = CaptumExplainer(model, "LayerGradCam", layer=layer)
    ours = grad_cam(model, images, TARGETS, layer="layer4")
    assert torch.allclose(cap(images, TARGETS), ours, atol=1e-4)
    small = CaptumExplainer(model, LayerGradCam, layer=layer, upsample=False)(images, TARGETS)
    assert small.shape == (4, 1, 4, 4)
    assert torch.allclose(small, grad_cam(model, images, TARGETS, upsample=False), atol=1e-4)


def test_method_kwargs_and_attribute_kwargs(resnet: nn.Module, images: Tensor) -> None:
    x = images[:2]
    cap = CaptumExplainer(resnet, IntegratedGradients, attribute_kwargs={"n_steps": 4})
    ref = IntegratedGradients(resnet).attribute(x, target=torch.tensor([0, 3]), n_steps=4)
    expected = ref.sum(1, keepdim=True).abs()
    got = CaptumExplainer(resnet, IntegratedGradients, attribute_kwargs={"n_steps": 4}, normalize=False)(x, [0, 3])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert cap(x, [0, 3]).max() <= 1


def test_unknown_method_suggests_a_name(resnet: nn.Module) -> None:
    with pytest.raises(InputError, match=r"Did you mean 'Saliency'"):
        CaptumExplainer(resnet, "Saliancy")
    with pytest.raises(InputError, match="'method' expected a captum.attr Attribution class"):
        CaptumExplainer(resnet, nn.Linear)


def test_create_graph_is_refused(resnet: nn.Module, images: Tensor) -> None:
    assert CaptumExplainer.differentiable is False
    with pytest.raises(InputError, match=r"'create_graph' expected False for this explainer .*'grad_cam'"):
        CaptumExplainer(resnet)(images, TARGETS, create_graph=True)


def test_bad_layer_and_target(resnet: nn.Module, images: Tensor) -> None:
    with pytest.raises(InputError, match="children there are"):
        CaptumExplainer(resnet, "LayerGradCam", layer="layer9")
    with pytest.raises(InputError, match=rf"class indices in \[0, {NUM_CLASSES - 1}\]"):
        CaptumExplainer(resnet)(images, NUM_CLASSES)


def test_no_hooks_left_and_mode_kept(images: Tensor) -> None:
    model = make_model("test_resnet", eval_mode=False)
    before = hook_count(model)
    for method, layer in (("Saliency", "auto"), ("LayerGradCam", "layer4"), ("LayerGradCam", "auto")):
        CaptumExplainer(model, method, layer=layer)(images, TARGETS)
    with pytest.raises(InputError):
        CaptumExplainer(model, "LayerGradCam", layer="layer4")(images, NUM_CLASSES + 1)
    assert hook_count(model) == before == 0
    assert model.training


@pytest.mark.parametrize("method,layer", [("Saliency", "auto"), ("LayerGradCam", "layer4")])
def test_works_under_no_grad(resnet: nn.Module, images: Tensor, method: str, layer: str) -> None:
    cap = CaptumExplainer(resnet, method, layer=layer)
    ref = cap(images, TARGETS)
    with torch.no_grad():
        assert torch.allclose(cap(images, TARGETS), ref, atol=1e-6)


def test_the_auto_layer_follows_the_input_size() -> None:
    """A layer method with layer="auto" on a non-timm model: the conv "2" gives 1x1 on 4x4 images
    ("1" is then the last map) and 4x4 on 16x16 ones ("3"): the first call's layer must not stick."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 4, stride=4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES)).eval()
    small, large = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 16, 16)
    cap = CaptumExplainer(model, "LayerGradCam", upsample=False)
    assert cap(small, [0, 1]).shape == (2, 1, 4, 4)
    assert cap(large, [0, 1]).shape == (2, 1, 4, 4)  # layer "3": a 4x4 map, not "1"'s 16x16
    want = CaptumExplainer(model, "LayerGradCam", layer="3", upsample=False)(large, [0, 1])
    torch.testing.assert_close(cap(large, [0, 1]), want)


def test_constructor_arguments_captum_would_misread_are_named() -> None:
    model = make_model("test_resnet")
    with pytest.raises(InputError, match=r"'method' expected an attribution method applied to the model, got "
                                             r"'NoiseTunnel'"):
        CaptumExplainer(model, "NoiseTunnel")
    with pytest.raises(InputError, match=r"'layer' expected a dotted module path or 'auto', got None"):
        CaptumExplainer(model, "LayerGradCam", layer=None)
    with pytest.raises(InputError, match=r"'layer' expected 'auto' for Saliency \(only layer methods take a "
                                             r"layer\), got 'layer4'"):
        CaptumExplainer(model, "Saliency", layer="layer4")  # (was silently ignored)
    with pytest.raises(InputError, match=r"'attribute_kwargs' expected captum's attribute arguments other than "
                                             r"'target'"):
        CaptumExplainer(model, "Saliency", attribute_kwargs={"target": 1})
