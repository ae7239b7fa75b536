"""Grad-CAM's variants (HiResCAM, LayerCAM, XGrad-CAM, Grad-CAM++): each against its paper's
formula computed in float64 from hooked activations and autograd gradients, on every path;
gradients that agree across paths; ``detach_weights``; signed activations; ALIGN with a variant.

(The contract tests in tests/contract/ enrol them too: output, functional form, create_graph,
hooks, batch of one.)"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch
from _helpers import make_model
from torch import Tensor, nn

import egl
from egl import recipes
from egl.backbones import _module
from egl.errors import InputError
from egl.explainers import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM, class_maps
from egl.kernels import triton_available
from egl.losses import energy_outside
from egl.recipes.batch import as_batch

TARGETS = [0, 3, 1, 4]
VARIANTS = {"hires_cam": HiResCAM, "layer_cam": LayerCAM, "xgrad_cam": XGradCAM, "grad_cam_plus_plus": GradCAMPlusPlus}


# -- the papers' formulas, from A and g = d s_y / d A (both [B, C, h, w], float64) ---------------
def _hires(a: Tensor, g: Tensor) -> Tensor:
    return (g * a).sum(1)


def _layer(a: Tensor, g: Tensor) -> Tensor:
    return (g.clamp(min=0) * a).sum(1)


def _xgrad(a: Tensor, g: Tensor) -> Tensor:
    w = ((a * g).sum((2, 3)) / a.sum((2, 3))).nan_to_num(0.0)  # 0/0: a channel the ReLU zeroed everywhere
    return (w[..., None, None] * a).sum(1)


def _plus_plus(a: Tensor, g: Tensor) -> Tensor:
    # Chattopadhyay et al. eq. 19 as written: g^2 / (2 g^2 + sum_ab A_ab g^3), zero where g = 0
    s = a.sum((2, 3), keepdim=True)
    coef = torch.where(g != 0, g**2 / (2 * g**2 + s * g**3), torch.zeros_like(g))
    w = (coef * g.clamp(min=0)).sum((2, 3))
    return (w[..., None, None] * a).sum(1)


FORMULA: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "hires_cam": _hires, "layer_cam": _layer, "xgrad_cam": _xgrad, "grad_cam_plus_plus": _plus_plus}


def reference(name: str, model: nn.Module, layer: str, x: Tensor, targets: list[int]) -> Tensor:
    """The variant's raw map ``[B, 1, h, w]`` (ReLU, no upsampling, no normalisation)."""
    store = {}
    handle = _module(model, layer, "test").register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    a = store["a"]
    g = torch.autograd.grad(logits.gather(1, torch.tensor(targets)[:, None]).sum(), a)[0]
    return FORMULA[name](a.detach(), g).clamp(min=0)[:, None]


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max() / b.abs().max().clamp_min(1e-30))


# (model, its last spatial layer, paths that reach it): the paths every head allows
CASES = [("test_resnet", "layer4", "closed_form"), ("test_resnet", "layer4", "pooled"),
         ("test_resnet", "layer4", "autograd"), ("test_resnet", "layer3", None),
         ("test_convnext", "stages.3", "pooled"), ("test_convnext", "stages.3", "autograd")]


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("arch,layer,path", CASES)
def test_matches_the_papers_formula(name: str, arch: str, layer: str, path: str | None, images: Tensor) -> None:
    model = make_model(arch, output_stride=16).double() if arch == "test_resnet" else make_model(arch).double()
    x = images.double()
    kw = {"path": path} if path else {"layer": layer}  # path=None: the hook on an earlier layer
    cam = VARIANTS[name](model, **kw)
    got = cam(x, TARGETS)
    raw = VARIANTS[name](model, upsample=False, normalize=False, **kw)(x, TARGETS)
    ref = reference(name, model, layer, x, TARGETS)
    assert ref.abs().max() > 0 and raw.shape == ref.shape
    assert rel_err(raw, ref) < 1e-10, (name, arch, path)
    assert got.shape == (4, 1, 64, 64) and torch.isfinite(got).all()


def test_at_a_pooled_linear_head_three_variants_reduce_to_grad_cam(images: Tensor) -> None:
    # a uniform gradient W[y] / (h*w): HiResCAM and XGrad-CAM are Grad-CAM; LayerCAM drops W's negative entries
    model = make_model("test_resnet")
    kw = {"upsample": False, "normalize": False, "path": "closed_form"}
    grad_cam = GradCAM(model, **kw)(images, TARGETS)
    assert torch.equal(HiResCAM(model, **kw)(images, TARGETS), grad_cam)
    torch.testing.assert_close(XGradCAM(model, **kw)(images, TARGETS), grad_cam)
    a = model.forward_features(images)
    w = model.fc.weight[TARGETS].clamp(min=0)
    manual = torch.einsum("bc,bchw->bhw", w, a)[:, None].clamp(min=0) / 4
    torch.testing.assert_close(LayerCAM(model, **kw)(images, TARGETS), manual)


@pytest.mark.parametrize("name", VARIANTS)
def test_a_vit_pooled_path_equals_its_autograd_path(name: str, images: Tensor) -> None:
    # average-pooled ViT tokens: signed activations, a uniform gradient over the patch tokens
    model = make_model("test_vit", global_pool="avg", class_token=False)
    maps = {p: VARIANTS[name](model, path=p, normalize=False, upsample=False)(images, TARGETS)
            for p in ("pooled", "autograd")}
    assert maps["autograd"].abs().max() > 0
    assert rel_err(maps["pooled"], maps["autograd"]) < 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_closed_form_gradients_equal_autograd_gradients(name: str, images: Tensor) -> None:
    model = make_model("test_resnet").double()
    x = images.double()

    def grads(path: str) -> dict[str, Tensor]:
        model.zero_grad(set_to_none=True)
        VARIANTS[name](model, path=path, normalize=False)(x, TARGETS, create_graph=True).square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    closed, auto = grads("closed_form"), grads("autograd")
    assert closed.keys() == auto.keys() and {"fc.weight", "conv1.0.weight"} <= auto.keys()
    for n in auto:
        assert rel_err(closed[n], auto[n]) < 1e-9, n


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("path", ["closed_form", "autograd"])
def test_detach_weights_leaves_the_linear_head_without_a_gradient(name: str, path: str, images: Tensor) -> None:
    model = make_model("test_resnet")
    cam = VARIANTS[name](model, path=path, detach_weights=True)
    sal = cam(images, TARGETS, create_graph=True)
    torch.testing.assert_close(sal, VARIANTS[name](model, path=path)(images, TARGETS))
    sal.sum().backward()
    assert model.fc.weight.grad is None or not model.fc.weight.grad.any()
    assert model.conv1[0].weight.grad is not None and model.conv1[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", VARIANTS)
def test_signed_activations_give_finite_maps_and_gradients(name: str, images: Tensor) -> None:
    # ViT tokens are signed: sums of activations near zero or negative (XGrad-CAM's denominator,
    # Grad-CAM++'s 2 + S*g) must not give inf or NaN
    model = make_model("test_vit", eval_mode=False)
    for relu in (True, False):
        model.zero_grad(set_to_none=True)
        sal = VARIANTS[name](model, relu=relu)(images, TARGETS, create_graph=True)
        assert torch.isfinite(sal).all() and sal.amax() == 1
        sal.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_plus_plus_clamps_a_vanishing_denominator() -> None:
    # S = -1 and g = 2: the paper's 2 + S*g is 0; the clamp makes it 1 (and 2 + S*g >= 2 for post-ReLU maps)
    cam = GradCAMPlusPlus(make_model("test_resnet"))
    a = torch.tensor([[[[-1.0, 0.0]], [[1.0, 2.0]]]])  # [1, 2, 1, 2]: sums -1 and 3
    g = torch.tensor([[[[2.0, 0.0]], [[0.5, -1.0]]]])
    _, alpha, _ = cam.weigh(a, g)
    torch.testing.assert_close(alpha, torch.tensor([[2.0 / 1.0, 0.5 / (2 + 3 * 0.5)]]))


def test_xgrad_gives_a_zero_sum_channel_weight_zero() -> None:
    cam = XGradCAM(make_model("test_resnet"))
    a = torch.tensor([[[[1.0, -1.0]], [[1.0, 3.0]]]], requires_grad=True)  # channel 0 sums to 0
    g = torch.tensor([[[[5.0, 5.0]], [[2.0, 1.0]]]])
    _, alpha, _ = cam.weigh(a, g)
    torch.testing.assert_close(alpha, torch.tensor([[0.0, (2.0 + 3.0) / 4.0]]))
    alpha.sum().backward()
    assert torch.isfinite(a.grad).all()
    _, w, _ = cam.weigh_uniform(a, torch.tensor([[7.0, 7.0]]), 0.5)
    torch.testing.assert_close(w, torch.tensor([[0.0, 7.0]]))


@pytest.mark.skipif(not triton_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
                    reason="needs Triton with TRITON_INTERPRET=1 (set by tests/conftest.py) or a GPU")
@pytest.mark.parametrize("name", ["layer_cam", "grad_cam_plus_plus"])
def test_the_triton_epilogue_serves_the_variants(name: str, images: Tensor) -> None:
    # per-position variants hand the epilogue a one-channel map; channel-weight variants C channels
    model = make_model("test_resnet", output_stride=16)
    out = {}
    for backend in ("torch", "triton"):
        model.zero_grad(set_to_none=True)
        sal = VARIANTS[name](model, layer="layer3", backend=backend)(images, TARGETS, create_graph=True)
        (sal * torch.linspace(0, 1, 64)).sum().backward()
        out[backend] = (sal.detach(), model.conv1[0].weight.grad.clone())
    torch.testing.assert_close(out["triton"][0], out["torch"][0], atol=1e-5, rtol=1e-4)
    assert rel_err(out["triton"][1], out["torch"][1]) < 1e-3


# -- ALIGN with a variant ---------------------------------------------------------------------
def test_align_takes_a_variant_by_name_with_its_layer(images: Tensor) -> None:
    model = make_model("test_resnet", eval_mode=False, output_stride=16)
    recipe = recipes.align(model, explainer="layer_cam", layer="layer3", warmup_steps=0)
    assert type(recipe.explainer) is LayerCAM and recipe.explainer.target_layer == "layer3"
    masks = (torch.rand(4, 1, 64, 64) > 0.5).float()
    sal = recipe.explainer(images, TARGETS, create_graph=True)
    loss = recipe.alignment(sal, masks)
    loss.backward()
    assert torch.isfinite(loss) and model.conv1[0].weight.grad.abs().sum() > 0


def test_align_reads_every_class_map_with_the_variant_weighting() -> None:
    """energy_outside reads class_maps with the explainer's weighting (LayerCAM's here): the
    alignment term equals the loss on LayerCAM's all-class maps, and differs from Grad-CAM's."""
    model = make_model("test_resnet", eval_mode=False, output_stride=16)
    x, y = torch.rand(4, 3, 64, 64), torch.tensor(TARGETS)
    masks = (torch.rand(4, 1, 64, 64) > 0.5).float()
    batch = as_batch({"image": x, "label": y, "mask": masks}, "test")
    terms = {}
    for name in ("layer_cam", "grad_cam"):
        recipe = recipes.align(model, explainer=name, masker="ground_truth", alignment="energy_outside",
                               warmup_steps=0)
        terms[name] = recipe._align_term(batch, None)
        weighting = LayerCAM(model) if name == "layer_cam" else None
        expected = energy_outside(class_maps(model, x, create_graph=True, weighting=weighting).saliency, masks)
        torch.testing.assert_close(terms[name], expected)
    assert not torch.allclose(terms["layer_cam"], terms["grad_cam"])
    terms["layer_cam"].backward()
    assert model.conv1[0].weight.grad.abs().sum() > 0

    class MyCAM(GradCAM):  # a user's subclass that keeps Grad-CAM's weighting: its maps are Grad-CAM's
        pass

    recipes.align(model, explainer=MyCAM(model), masker="ground_truth", alignment="energy_outside")


def test_errors_name_the_variant_and_the_argument(images: Tensor) -> None:
    model = make_model("test_resnet")
    with pytest.raises(InputError, match="^egl.explainers.LayerCAM: 'path' expected one of"):
        LayerCAM(model, path="bogus")
    with pytest.raises(InputError, match="^egl.explainers.grad_cam_plus_plus: 'path' expected one of"):
        GradCAMPlusPlus(model, layer="layer3", path="closed_form")(images, TARGETS)
    with pytest.raises(egl.ComponentNotFoundError,
                       match="^egl.recipes.align: 'explainer' expected a registered explainer name, got 'layercam'"):
        recipes.align(model, explainer="layercam", layer="layer3")
