"""Grad-CAM's ``relu`` and ``detach_weights`` options (the signed, constant-weight maps DRE trains on)."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model
from torch import Tensor

from egl.explainers import GradCAM, grad_cam, minmax_normalize

TARGETS = [0, 3, 1, 4]
#: Paths each tiny model allows, plus the hook path on a named layer.
CASES = {
    "test_resnet": (("closed_form", "auto"), ("pooled", "auto"), ("autograd", "auto"), ("autograd", "layer4")),
    "test_convnext": (("pooled", "auto"), ("autograd", "auto"), ("autograd", "stages.3")),
}
HEAD = {"test_resnet": "fc.weight", "test_convnext": "head.fc.weight", "test_vit": "head.weight"}
STEM = {"test_resnet": "conv1.0.weight", "test_convnext": "stem.0.weight", "test_vit": "patch_embed.proj.weight"}


def rel_err(a: Tensor, b: Tensor, floor: float = 1e-30) -> float:
    """Largest difference relative to the reference's largest magnitude (at least ``floor``)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor))


def grads(model: torch.nn.Module, sal: Tensor) -> dict[str, Tensor]:
    model.zero_grad(set_to_none=True)
    (sal * torch.linspace(-1, 1, sal[0].numel()).view(sal[0].shape)).sum().backward()  # not a constant map
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", list(CASES))
def test_relu_false_keeps_the_signed_map(name: str, images: Tensor) -> None:
    model = make_model(name)
    for path, layer in CASES[name]:
        kw = {"layer": layer, "path": path, "upsample": False}  # ReLU and bilinear resizing do not commute
        signed = grad_cam(model, images, TARGETS, normalize=False, relu=False, **kw)
        assert signed.min() < 0, (path, layer)  # some sample has negative evidence
        rect = grad_cam(model, images, TARGETS, normalize=False, **kw)
        assert torch.allclose(torch.relu(signed), rect, atol=1e-7), (path, layer)
        norm = grad_cam(model, images, TARGETS, relu=False, **kw)
        assert torch.allclose(norm, minmax_normalize(signed), atol=1e-6)
        assert norm.min() == 0 and (norm.flatten(1).amax(1) - 1).abs().max() < 1e-6


@pytest.mark.parametrize("name", list(CASES))
def test_paths_agree_with_the_options_set(name: str, images: Tensor) -> None:
    model = make_model(name)
    kw = {"relu": False, "detach_weights": True, "upsample": False, "create_graph": True}
    maps, param_grads = {}, {}
    for path, layer in CASES[name]:
        sal = grad_cam(model, images, TARGETS, layer=layer, path=path, **kw)
        maps[path, layer], param_grads[path, layer] = sal.detach(), grads(model, sal)
    ref_map, ref_grads = maps[CASES[name][0]], param_grads[CASES[name][0]]
    for key in maps:
        assert torch.allclose(maps[key], ref_map, atol=1e-5), key
        assert param_grads[key].keys() == ref_grads.keys(), key
        scale = max(float(g.abs().max()) for g in ref_grads.values())
        for n in ref_grads:  # some gradients are zero up to rounding (a bias before a norm): floor the scale
            assert rel_err(param_grads[key][n], ref_grads[n], 1e-4 * scale) < 1e-3, (key, n)


@pytest.mark.parametrize("name", [*CASES, "test_vit"])
def test_detach_weights_cuts_the_path_through_the_head(name: str, images: Tensor) -> None:
    # The head's weights reach the map only through the channel weights (W[y] or alpha):
    # detached, the head gets no gradient from the map, while the trunk still does.
    model = make_model(name)
    for detach in (False, True):
        sal = grad_cam(model, images, TARGETS, create_graph=True, relu=False, detach_weights=detach)
        g = grads(model, sal)
        assert STEM[name] in g and g[STEM[name]].abs().sum() > 0 and torch.isfinite(g[STEM[name]]).all()
        if detach:
            assert HEAD[name] not in g
        else:
            assert g[HEAD[name]].abs().sum() > 0


def test_detached_weights_equal_a_manual_constant_weight_map(images: Tensor) -> None:
    model = make_model("test_resnet", output_stride=16)
    sal = grad_cam(model, images, TARGETS, create_graph=True, relu=False, detach_weights=True,
                   upsample=False, normalize=False)
    got = grads(model, sal)
    a = model.forward_features(images)
    w = model.fc.weight[TARGETS].detach()
    manual = torch.einsum("bc,bchw->bhw", w, a)[:, None] / (a.shape[-2] * a.shape[-1])
    assert torch.allclose(sal, manual, atol=1e-6)
    want = grads(model, manual)
    assert got.keys() == want.keys()
    for n in want:
        assert rel_err(got[n], want[n]) < 1e-5, n


def test_options_are_stored_and_default_off(images: Tensor) -> None:
    model = make_model("test_resnet")
    cam = GradCAM(model)
    assert cam.relu and not cam.detach_weights
    out = GradCAM(model, relu=False, detach_weights=True).explain(images, TARGETS)
    assert not out.saliency.requires_grad and not out.logits.requires_grad
    assert all(p.grad is None for p in model.parameters())
