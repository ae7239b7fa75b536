"""What a training loop of one's own hands egl's parts: layers as modules, modules replaced after
an explainer was built, channels-last images, targets as ints, lists and NumPy values, masks of
other shapes, and a checkpointed ViT under create_graph=True."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm
import torch
from _helpers import make_model

import egl
from egl.explainers import GradCAM, grad_cam
from egl.losses import BCEAlignmentLoss, MaskerDistLoss
from egl.metrics import deletion, faithfulness


def _x(size: int = 64) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_a_layer_given_as_a_module_and_a_module_replaced_after_the_explainer_was_built() -> None:
    model, x = make_model("test_resnet"), _x()
    torch.testing.assert_close(grad_cam(model, x, [0, 1], layer=model.layer3),
                               grad_cam(model, x, [0, 1], layer="layer3"))
    with pytest.raises(egl.InputError, match=r"'layer' expected a submodule of the model \(ResNet\).*got a Conv2d "
                                             r"that is not one of its modules"):
        grad_cam(model, x, [0, 1], layer=torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(egl.InputError, match=r"'layer' expected one of the model's layers, got the model itself"):
        grad_cam(model, x, [0, 1], layer=model)
    cam = GradCAM(model, layer=model.layer4)
    before = cam(x, [0, 1])
    model.layer4 = copy.deepcopy(model.layer4)  # (SyncBN conversion, fusing, adapters replace modules)
    torch.testing.assert_close(cam(x, [0, 1]), before)  # the new module at that name is hooked


def test_channels_last_or_grayscale_images_are_named_where_the_model_refuses_them() -> None:
    model, x = make_model("test_resnet"), _x()
    nhwc = x.permute(0, 2, 3, 1)
    with pytest.raises(egl.InputError, match=r"grad_cam: 'x' expected images \[B, 3, H, W\].*got a torch.float32 "
                                             r"tensor of shape \[2, 64, 64, 3\].*x.permute\(0, 3, 1, 2\)"):
        grad_cam(model, nhwc, [0, 1])
    with pytest.raises(egl.InputError, match=r"faithfulness: 'x' expected images \[B, 3, H, W\].*permute"):
        faithfulness(model, nhwc, torch.rand(2, 1, 64, 64))
    with pytest.raises(egl.InputError, match=r"MaskerDistLoss: 'x' expected images \[B, 3, H, W\].*shape "
                                             r"\[2, 1, 64, 64\].*Pass images with 3 channels"):
        MaskerDistLoss()(model, x[:, :1], torch.rand(2, 1, 64, 64), torch.tensor([0, 1]))


def test_metric_targets_take_ints_lists_and_numpy_as_explainers_do() -> None:
    model, x, s = make_model("test_resnet"), _x(32), torch.rand(2, 1, 32, 32)
    expected = faithfulness(model, x, s, target=torch.tensor([1, 2]))
    for target in ([1, 2], (1, 2), np.array([1, 2])):
        got = faithfulness(model, x, s, target=target)
        torch.testing.assert_close(got.comprehensiveness, expected.comprehensiveness)
    assert deletion(model, x, s, target=1, steps=2).target.tolist() == [1, 1]
    assert deletion(model, x, s, target=np.int64(3), steps=2).target.tolist() == [3, 3]
    torch.testing.assert_close(grad_cam(model, _x(), np.array([1, 2])), grad_cam(model, _x(), [1, 2]))
    torch.testing.assert_close(grad_cam(model, _x(), np.int64(2)), grad_cam(model, _x(), 2))


@pytest.mark.parametrize(("shape", "fix"), [
    ((8, 8), r"mask\[None\]"),
    ((2, 8, 8, 1), r"mask.permute\(0, 3, 1, 2\), or mask.squeeze\(-1\)"),
    ((2, 3, 8, 8), r"mask\[:, :1\]"),
])
def test_a_mask_of_another_shape_gets_the_fix_that_fits_it(shape: tuple[int, ...], fix: str) -> None:
    with pytest.raises(egl.InputError, match=fix):
        BCEAlignmentLoss()(torch.rand(2, 1, 8, 8), torch.rand(*shape))


def test_a_checkpointed_vit_under_create_graph_is_refused_with_the_fix() -> None:
    model = timm.create_model("test_vit", num_classes=5).train()
    model.set_grad_checkpointing(True)
    if not any(getattr(m, "fused_attn", False) for m in model.modules()):
        pytest.skip("this timm's attention runs no fused kernel here")
    with pytest.raises(egl.InputError, match=r"'create_graph' expected a model without activation checkpointing "
                                             r".*set_grad_checkpointing\(False\)"):
        GradCAM(model).explain(_x(), [0, 1], create_graph=True)
    GradCAM(model).explain(_x(), [0, 1])  # no double backward: fine


def test_input_gradient_keeps_a_computed_x_in_the_graph_under_create_graph() -> None:
    """As Grad-CAM does: a learnable stage before the model gets the map's and the logits' gradients."""
    from egl.explainers import InputGradient

    model, stage = make_model("test_resnet", eval_mode=False), torch.nn.Conv2d(3, 3, 1)
    out = InputGradient(model).explain(stage(_x(32)), [0, 1], create_graph=True)
    (out.saliency.sum() + out.logits.sum()).backward()
    assert stage.weight.grad is not None and float(stage.weight.grad.abs().sum()) > 0
    x = _x(32)  # a plain batch: taken as a leaf of its own, as before
    assert InputGradient(model).explain(x, [0, 1], create_graph=True).saliency.requires_grad and x.grad is None


def test_smoothing_keeps_a_computed_x_in_the_graph_under_create_graph() -> None:
    from egl.explainers import SmoothedExplainer

    model, stage = make_model("test_resnet", eval_mode=False), torch.nn.Conv2d(3, 3, 1)
    sal = SmoothedExplainer(model, "grad_cam", samples=2)(stage(_x()), [0, 1], create_graph=True)
    grad = torch.autograd.grad(sal.sum(), stage.weight)[0]
    assert float(grad.abs().sum()) > 0
