"""Models egl must not explain by skipping what their forward does: a subclass's forward, a hook on
the model, wrappers (DataParallel, torch.compile, a module of the user's holding a timm model), and
the layers of a class-token ViT whose patch tokens never reach the logits."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from _helpers import make_model
from torch import nn

import egl
from egl.backbones import split_forward, unwrap
from egl.explainers import GradCAM, ScoreCAM, grad_cam

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def _x() -> torch.Tensor:
    return torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


class Normalising(timm.models.ResNet):
    """A timm ResNet whose own forward normalises: egl must run it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward((x - MEAN) / STD)


class Holder(nn.Module):
    """A module of the user's around a timm model, picking the logits from a dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return {"logits": self.backbone(x)}["logits"]


def test_a_subclass_forward_or_a_hook_on_the_model_is_run_not_skipped() -> None:
    plain, x = make_model("test_resnet"), _x()
    reference = grad_cam(plain, (x - MEAN) / STD, [0, 1])  # what the model really explains
    sub = make_model("test_resnet")
    sub.__class__ = Normalising
    assert split_forward(plain) and not split_forward(sub)
    out = GradCAM(sub).explain(x, [0, 1])
    torch.testing.assert_close(out.saliency, reference, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(out.logits, sub(x))
    cam = GradCAM(plain)  # resolved to the split forward; the hook comes after
    assert cam.target_layer == "forward_features"
    handle = plain.register_forward_pre_hook(lambda m, a: ((a[0] - MEAN) / STD,))
    try:
        torch.testing.assert_close(cam(x, [0, 1]), reference, atol=1e-5, rtol=1e-4)
        assert cam.target_layer != "forward_features"
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
@pytest.mark.parametrize("wrap", ["data_parallel", "compile", "holder"])
def test_a_wrapped_model_gets_the_maps_of_the_model_inside(arch: str, wrap: str) -> None:
    model, x = make_model(arch), _x()
    reference = GradCAM(model)(x, [0, 1])
    wrapped = {"data_parallel": nn.DataParallel, "compile": torch.compile, "holder": Holder}[wrap](model)
    assert unwrap(wrapped)[0] is model
    cam = GradCAM(wrapped)
    torch.testing.assert_close(cam(x, [0, 1]), reference, atol=1e-5, rtol=1e-4)
    assert "attn" not in (cam.target_layer or "")  # (a ViT's attention tensors are not maps)
    assert GradCAM(wrapped, layer="layer3" if arch == "test_resnet" else "blocks.-1.norm1")(x, [0, 1]).shape \
        == (2, 1, 64, 64)  # the inner model's names work too


def test_a_class_token_vits_last_block_output_warns_that_its_map_is_all_zero() -> None:
    model, x = make_model("test_vit"), _x()
    with pytest.warns(UserWarning, match=r"at layer 'norm' the class score's gradient reaches the prefix \(class\) "
                                         r"tokens only.*layer='blocks.-1.norm1'"):
        assert float(GradCAM(model, layer="norm")(x, [0, 1]).max()) == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GradCAM(model)(x, [0, 1])  # layer="auto": blocks.-1.norm1, no warning


def test_score_cam_and_the_masker_objective_refuse_batchnorm_in_training_mode() -> None:
    from egl.losses import MaskerDistLoss

    model, x = make_model("test_resnet", eval_mode=False), _x()
    before = model.bn1.running_mean.clone()
    with pytest.raises(egl.InputError, match=r"score_cam: 'model' expected a model in eval mode .*Call model.eval"):
        ScoreCAM(model, layer="layer3")(x, [0, 1])
    with pytest.raises(egl.InputError, match=r"'model' expected a model in eval mode \(BatchNorm in training mode "
                                             r"would normalise the two masked halves together.*masker step"):
        MaskerDistLoss()(model, x, torch.rand(2, 1, 64, 64), torch.tensor([0, 1]))
    assert torch.equal(model.bn1.running_mean, before)
    MaskerDistLoss()(model.eval(), x, torch.rand(2, 1, 64, 64), torch.tensor([0, 1]))


def test_the_randomisation_cascade_opens_a_wrapper() -> None:
    from egl.metrics import randomization_layers

    model = make_model("test_resnet")
    bare = randomization_layers(model)
    assert randomization_layers(nn.DataParallel(model)) == tuple(f"module.{n}" for n in bare)
    assert randomization_layers(Holder(model)) == tuple(f"backbone.{n}" for n in bare)
    assert randomization_layers(nn.Sequential(nn.Linear(2, 2))) == ("0",)


def test_a_compiled_model_in_rrr_smoothing_and_the_randomisation_test_runs_its_eager_model() -> None:
    from egl.explainers import SmoothedExplainer
    from egl.losses import rrr_penalty
    from egl.metrics import parameter_randomization

    model, x = make_model("test_resnet"), _x()
    compiled = torch.compile(model)
    mask = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(rrr_penalty(compiled, x, mask), rrr_penalty(model, x, mask))
    SmoothedExplainer(compiled, GradCAM(compiled), samples=2)(x, [0, 1])
    result = parameter_randomization(compiled, x, "grad_cam")
    assert result.layers[0] == "_orig_mod.fc" and result.spearman.shape[0] == len(result.layers) > 1


def test_a_wrapper_that_resizes_is_probed_through_its_own_forward() -> None:
    """A resize before the model moves the map sizes: the wrapper's forward is what is probed."""
    model = make_model("test_resnet")
    resized = nn.Sequential(nn.Upsample(size=64), model)
    cam = GradCAM(resized)
    torch.testing.assert_close(cam(torch.rand(2, 3, 16, 16), [0, 1]).shape, torch.Size([2, 1, 16, 16]))
    plain = GradCAM(model)
    plain(_x(), [0, 1])
    assert cam.target_layer == "1.layer4"  # (at 16 px inside the model, layer4 would be 1 x 1)


def test_an_average_pooled_vit_inside_a_wrapper_keeps_its_features() -> None:
    model, x = timm.create_model("test_vit", num_classes=5, global_pool="avg").eval(), _x()
    reference = GradCAM(model)
    parallel, held = GradCAM(nn.DataParallel(model)), GradCAM(Holder(model))
    for cam in (parallel, held):
        torch.testing.assert_close(cam(x, [0, 1]), reference(x, [0, 1]), atol=1e-5, rtol=1e-4)
    assert reference.target_layer == parallel.target_layer == "forward_features"  # (DataParallel: its module)
    assert held.target_layer == "backbone.norm"  # forward_features' output, hooked


def test_the_probe_reads_maps_not_attention_tensors_and_names_a_vit_layer() -> None:
    from egl.backbones import _spatial

    x = torch.zeros(1, 3, 64, 64)
    assert _spatial(torch.zeros(1, 8, 16, 16), x) and _spatial(torch.zeros(1, 3, 3, 8), torch.zeros(1, 3, 65, 96))
    assert not _spatial(torch.zeros(1, 2, 17, 32), x)  # a 64-px test_vit's [B, heads, tokens, head_dim]

    class Scaled(nn.Module):  # holds a ViT and a parameter of its own: probed
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.t = make_model("test_vit"), nn.Parameter(torch.ones(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.backbone(x) * self.t

    with pytest.warns(UserWarning, match=r"patch embedding.*Pass layer='backbone.blocks.-1.norm1'"):
        GradCAM(Scaled())(_x(), [0, 1])


def test_grayscale_images_into_a_normalising_rgb_model_are_named() -> None:
    from egl.normalization import normalize_inputs

    model = normalize_inputs(make_model("test_resnet"), "imagenet")
    with pytest.raises(egl.InputError, match=r"'x' expected images with the 3 channels the model normalises.*"
                                             r"x.expand\(-1, 3, -1, -1\)"):
        model(torch.rand(2, 1, 32, 32))
