"""class_maps: signed Grad-CAM of every class, closed form and per-class fallback."""

from __future__ import annotations

import pytest
import torch
from _helpers import NUM_CLASSES, make_model

from egl.explainers import class_maps, grad_cam


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
def test_relu_of_each_class_map_is_that_class_grad_cam(name: str) -> None:
    model = make_model(name)
    x = torch.randn(2, 3, 64, 64)
    out = class_maps(model, x)
    assert out.saliency.shape[:2] == (2, NUM_CLASSES) and out.logits.shape == (2, NUM_CLASSES)
    for k in range(NUM_CLASSES):
        ref = grad_cam(model, x, k, upsample=False, normalize=False)
        torch.testing.assert_close(torch.relu(out.saliency[:, k : k + 1]), ref, atol=1e-7, rtol=1e-5)
    assert bool((out.saliency < 0).any())  # signed: negative evidence is kept


def test_differentiable_when_asked() -> None:
    model = make_model("test_resnet")
    out = class_maps(model, torch.randn(2, 3, 64, 64), create_graph=True)
    out.saliency.abs().sum().backward()
    assert model.get_classifier().weight.grad is not None
    assert not class_maps(model, torch.randn(2, 3, 64, 64)).saliency.requires_grad


@pytest.mark.parametrize("name", ["test_convnext", "test_vit"])
def test_one_trunk_pass_for_every_class_and_trains(name: str) -> None:
    """Heads that are not pool + Linear: the trunk runs once, the K gradients go through the head
    (or the ViT's last block) only; with create_graph the maps train the trunk, and they equal
    Grad-CAM's per-class maps there too."""
    model = make_model(name)
    x = torch.randn(2, 3, 64, 64)
    first = model.stem if name == "test_convnext" else model.patch_embed
    calls = []
    handle = first.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = class_maps(model, x, create_graph=True)
    finally:
        handle.remove()
    assert len(calls) == 1
    for k in range(NUM_CLASSES):  # signed maps, both halves
        ref = grad_cam(model, x, k, upsample=False, normalize=False, relu=False, create_graph=True)
        torch.testing.assert_close(out.saliency[:, k: k + 1], ref, atol=1e-6, rtol=1e-5)
    out.saliency.abs().sum().backward()
    first_param = next(first.parameters())
    assert first_param.grad is not None and float(first_param.grad.abs().sum()) > 0


def test_a_layer_off_the_path_to_the_logits_is_an_error_not_zero_maps() -> None:
    import egl

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.aux = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 2, 3)
            self.fc = torch.nn.Linear(4, NUM_CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.aux(x)  # runs, but never reaches the logits
            return self.fc(self.conv(x).mean((2, 3)))

    with pytest.raises(egl.UnsupportedModelError, match="do not depend on layer 'aux'"):
        class_maps(Net(), torch.randn(2, 3, 16, 16), layer="aux")


def test_maps_come_in_the_input_dtype_under_autocast() -> None:
    model = make_model("test_convnext")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = class_maps(model, torch.randn(2, 3, 64, 64))
    assert out.saliency.dtype == torch.float32


VARIANTS = ["LayerCAM", "GradCAMPlusPlus", "XGradCAM", "HiResCAM"]


@pytest.mark.parametrize("layer", ["auto", "layer3"])  # closed form (pool + Linear) and per-class autograd
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_variant_weighting_gives_its_own_raw_map_for_every_class(variant: str, layer: str) -> None:
    import egl.explainers as ex

    cls = getattr(ex, variant)
    model = make_model("test_resnet", output_stride=16).double()
    x = torch.rand(3, 3, 64, 64, dtype=torch.float64)
    maps = class_maps(model, x, layer=layer, weighting=cls(model)).saliency
    own = cls(model, layer, upsample=False, normalize=False, relu=False)
    ref = torch.cat([own(x, target=k) for k in range(NUM_CLASSES)], dim=1)
    torch.testing.assert_close(maps, ref, rtol=1e-10, atol=1e-12)
    if variant in ("LayerCAM", "GradCAMPlusPlus"):  # (HiResCAM and XGrad-CAM equal Grad-CAM at a linear head)
        assert not torch.allclose(maps, class_maps(model, x, layer=layer).saliency)


@pytest.mark.parametrize("name", ["test_convnext", "test_vit"])
def test_a_variant_weighting_on_heads_that_are_not_pool_and_linear(name: str) -> None:
    from egl.explainers import LayerCAM

    model = make_model(name)
    x = torch.randn(2, 3, 64, 64)
    out = class_maps(model, x, weighting=LayerCAM(model), create_graph=True)
    own = LayerCAM(model, upsample=False, normalize=False, relu=False)
    for k in range(NUM_CLASSES):
        torch.testing.assert_close(out.saliency[:, k:k + 1], own(x, target=k), atol=1e-6, rtol=1e-4)
    out.saliency.abs().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() > 1)


@pytest.mark.parametrize("layer", ["auto", "layer3"])
@pytest.mark.parametrize("variant", ["GradCAM", "LayerCAM", "GradCAMPlusPlus"])
def test_detach_weights_holds_the_weights_constant(variant: str, layer: str) -> None:
    """As the explainer itself does: the head (after the target layer) reaches the maps through the
    channel weights only, so held constant it gets no gradient; the values are the same."""
    import egl.explainers as ex

    cls = getattr(ex, variant)
    model = make_model("test_resnet", output_stride=16)
    x = torch.randn(2, 3, 64, 64)
    free = class_maps(model, x, layer=layer, create_graph=True, weighting=cls(model))
    held = class_maps(model, x, layer=layer, create_graph=True, weighting=cls(model, detach_weights=True))
    torch.testing.assert_close(free.saliency, held.saliency)
    head = model.get_classifier().weight
    assert torch.autograd.grad(free.saliency.sum(), head)[0].abs().sum() > 0
    assert torch.autograd.grad(held.saliency.sum(), head, allow_unused=True)[0] is None
    own = cls(model, layer, upsample=False, normalize=False, relu=False, detach_weights=True)
    ref = sum(own(x, target=k, create_graph=True).sum() for k in range(NUM_CLASSES))
    assert torch.autograd.grad(ref, head, allow_unused=True)[0] is None  # (the explainer's own behaviour)


def test_grad_cam_weighting_is_grad_cam() -> None:
    from egl.explainers import GradCAM

    model = make_model("test_resnet", output_stride=16)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(class_maps(model, x, layer="layer3", weighting=GradCAM(model)).saliency,
                       class_maps(model, x, layer="layer3").saliency)


def test_weighting_must_be_a_grad_cam() -> None:
    import egl
    from egl.explainers import InputGradient

    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match="class_maps: 'weighting' expected a GradCAM instance"):
        class_maps(model, torch.randn(2, 3, 64, 64), weighting=InputGradient(model))


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
def test_under_bf16_autocast_the_maps_are_grad_cams_sums(name: str) -> None:
    """Summed in float32, as Grad-CAM's epilogue does (in bfloat16 they were 3e-3 off it)."""
    model = make_model(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = class_maps(model, x).saliency
        for k in range(NUM_CLASSES):
            ref = grad_cam(model, x, k, upsample=False, normalize=False, relu=False)
            torch.testing.assert_close(maps[:, k:k + 1], ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
