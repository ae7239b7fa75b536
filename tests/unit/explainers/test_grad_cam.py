"""Grad-CAM: agreement with captum, agreement of the three paths, the output contract,
differentiability, model-state hygiene, hook hygiene, ViTs and non-timm models, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import NUM_CLASSES, TINY_MODELS, make_model
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

import egl
from egl.backbones import _module
from egl.errors import InputError
from egl.explainers import GradCAM, grad_cam, minmax_normalize

#: Each tiny CNN with the module whose output is the map its head pools.
CNN_LAYERS = {"test_resnet": "layer4", "test_convnext": "stages.3", "test_efficientnet": "bn2"}
CNNS = tuple(CNN_LAYERS)
#: Which paths each head allows, best first.
ALLOWED = {
    "test_resnet": ("closed_form", "pooled", "autograd"),
    "test_convnext": ("pooled", "autograd"),
    "test_efficientnet": ("closed_form", "pooled", "autograd"),
}
CLASSIFIER = {"test_resnet": "fc.weight", "test_convnext": "head.fc.weight",
              "test_efficientnet": "classifier.weight", "test_vit": "head.weight"}
STEM = {"test_resnet": "conv1.0.weight", "test_convnext": "stem.0.weight",
        "test_efficientnet": "conv_stem.weight", "test_vit": "patch_embed.proj.weight"}
TARGETS = [0, 3, 1, 4]


def rel_err(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference relative to the reference map's largest magnitude."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def captum_grad_cam(model: nn.Module, layer: str, x: Tensor, target: Tensor, size: tuple[int, int] | None) -> Tensor:
    ref = LayerGradCam(model, _module(model, layer, "test")).attribute(x, target, relu_attributions=True)
    return ref if size is None else LayerAttribution.interpolate(ref, size, "bilinear")


def assert_full_range(sal: Tensor) -> None:
    """Each sample spans exactly [0, 1], or is all zeros (a target whose Grad-CAM is negative everywhere)."""
    hi, lo = sal.flatten(1).amax(1), sal.flatten(1).amin(1)
    assert torch.equal(lo, torch.zeros_like(lo))
    assert ((hi - 1).abs() < 1e-6).logical_or(hi == 0).all(), hi
    assert (hi == 1).any()


def small_cnn(bn: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8) if bn else nn.Identity(), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES),
    ).eval()


def hooks_on(model: nn.Module) -> list[str]:
    """Every hook registered on any submodule (or globally), as readable strings."""
    found = []
    for name, mod in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks"):
            d = getattr(mod, attr, None)
            if d:
                found.append(f"{name or '<root>'}.{attr}: {len(d)}")
    from torch.nn.modules import module as m

    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        if getattr(m, attr, None):
            found.append(f"global {attr}")
    return found


# -- reference: captum's LayerGradCam ----------------------------------------------------


@pytest.mark.parametrize("name", CNNS)
def test_matches_captum_layer_grad_cam(name: str, images: Tensor) -> None:
    model = make_model(name)
    t = torch.tensor(TARGETS)
    ref = captum_grad_cam(model, CNN_LAYERS[name], images, t, (64, 64))
    raw = grad_cam(model, images, t, normalize=False)
    assert ref.abs().max() > 0
    assert rel_err(raw, ref) < 1e-5
    norm = grad_cam(model, images, t)
    assert torch.allclose(norm, minmax_normalize(ref), atol=1e-4)


def test_matches_captum_at_feature_resolution(images: Tensor) -> None:
    model = make_model("test_resnet", output_stride=16)
    t = torch.tensor(TARGETS)
    ref = captum_grad_cam(model, "layer4", images, t, None)
    raw = grad_cam(model, images, t, normalize=False, upsample=False)
    assert raw.shape == ref.shape == (4, 1, 4, 4)
    assert rel_err(raw, ref) < 1e-5


# -- the three paths -------------------------------------------------------------------------


@pytest.mark.parametrize("name", CNNS)
def test_paths_agree(name: str, images: Tensor) -> None:
    model = make_model(name)
    ref = grad_cam(model, images, TARGETS, normalize=False, path="autograd")
    maps = {p: grad_cam(model, images, TARGETS, normalize=False, path=p) for p in ALLOWED[name]}
    maps["hook"] = grad_cam(model, images, TARGETS, normalize=False, layer=CNN_LAYERS[name])
    for path, m in maps.items():
        assert rel_err(m, ref) < 1e-5, path
    norm = {p: grad_cam(model, images, TARGETS, path=p) for p in ALLOWED[name]}
    for path, m in norm.items():
        assert torch.allclose(m, norm["autograd"], atol=1e-4), path


@pytest.mark.parametrize("name,expected", [("test_resnet", "closed_form"), ("test_efficientnet", "closed_form"),
                                           ("test_convnext", "pooled"), ("test_vit", "autograd")])
def test_auto_picks_the_fastest_valid_path(name: str, expected: str, images: Tensor) -> None:
    cam = GradCAM(make_model(name))
    assert cam.last_path is None
    cam(images)
    assert cam.last_path == expected


def test_dotted_layer_takes_the_hook_path(images: Tensor) -> None:
    cam = GradCAM(make_model("test_resnet"), layer="layer4")
    cam(images)
    assert cam.last_path == "autograd" and cam.target_layer == "layer4"
    with pytest.raises(InputError, match="closed_form"):
        GradCAM(make_model("test_resnet"), layer="layer4", path="closed_form")(images)


def test_closed_form_refused_on_a_head_that_is_not_linear(images: Tensor) -> None:
    cam = GradCAM(make_model("test_convnext"), path="closed_form")
    with pytest.raises(InputError, match=r"'path' expected one of \['pooled', 'autograd'\] for ConvNeXt"):
        cam(images)


def test_dropout_in_train_mode_is_not_closed_form(images: Tensor) -> None:
    model = make_model("test_resnet", eval_mode=False, drop_rate=0.5)
    cam = GradCAM(model, normalize=False)
    torch.manual_seed(3)
    pooled = cam(images, TARGETS)
    assert cam.last_path == "pooled"
    with pytest.raises(InputError, match="closed_form"):
        GradCAM(model, path="closed_form")(images)
    # Same dropout draw: the pooled map equals the autograd map through the dropped-out head ...
    torch.manual_seed(3)
    auto = grad_cam(model, images, TARGETS, normalize=False, path="autograd")
    assert rel_err(pooled, auto) < 1e-5
    # ... which is not the closed form W[y] . A (the dropout mask matters in train mode).
    with torch.no_grad():
        a = model.forward_features(images)
        w = model.fc.weight[TARGETS]
        closed = F.interpolate(torch.relu(torch.einsum("bc,bchw->bhw", w, a))[:, None] / 4, (64, 64),
                               mode="bilinear", align_corners=False)
    assert rel_err(pooled, closed) > 1e-2
    model.eval()
    cam(images, TARGETS)
    assert cam.last_path == "closed_form"


# -- output contract -----------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_MODELS)
def test_output_contract(name: str, images: Tensor) -> None:
    model = make_model(name)
    out = GradCAM(model).explain(images, TARGETS)
    sal = out.saliency
    assert sal.shape == (4, 1, 64, 64)
    assert sal.dtype == torch.float32 and sal.device == images.device
    assert torch.isfinite(sal).all()
    assert sal.min() >= 0 and sal.max() <= 1
    assert_full_range(sal)
    assert torch.allclose(out.logits, model(images), atol=1e-5)
    assert not sal.requires_grad and not out.logits.requires_grad


@pytest.mark.parametrize("name,kwargs,size", [
    ("test_resnet", {}, (2, 2)),
    ("test_resnet", {"output_stride": 16}, (4, 4)),
    ("test_convnext", {}, (2, 2)),
    ("test_efficientnet", {}, (2, 2)),
    ("test_vit", {}, (4, 4)),
])
def test_upsample_false_keeps_feature_resolution(name: str, kwargs: dict, size: tuple[int, int],
                                                  images: Tensor) -> None:
    model = make_model(name, **kwargs)
    small = grad_cam(model, images, TARGETS, upsample=False, normalize=False)
    assert small.shape == (4, 1, *size)
    big = grad_cam(model, images, TARGETS, normalize=False)
    up = F.interpolate(small, (64, 64), mode="bilinear", align_corners=False)
    assert rel_err(big, up) < 1e-5


@pytest.mark.parametrize("name", TINY_MODELS)
def test_target_forms_agree(name: str, images: Tensor) -> None:
    model = make_model(name)
    pred = model(images).argmax(1)
    cls = 2
    ref = grad_cam(model, images, torch.full((4,), cls), normalize=False)
    for t in (cls, [cls] * 4, torch.tensor(cls), torch.tensor([cls] * 4, dtype=torch.int32)):
        assert torch.equal(grad_cam(model, images, t, normalize=False), ref), t
    by_argmax = grad_cam(model, images, pred, normalize=False)
    assert torch.equal(grad_cam(model, images, None, normalize=False), by_argmax)
    assert torch.equal(grad_cam(model, images, pred.tolist(), normalize=False), by_argmax)


def test_per_sample_targets_are_per_sample(images: Tensor) -> None:
    model = make_model("test_resnet")
    mixed = grad_cam(model, images, TARGETS, normalize=False)
    for i, t in enumerate(TARGETS):
        assert torch.equal(mixed[i], grad_cam(model, images, t, normalize=False)[i])


def test_all_zero_map_is_zeros_not_nan(images: Tensor) -> None:
    model = make_model("test_resnet")
    with torch.no_grad():
        model.fc.weight.zero_()
    for path in ALLOWED["test_resnet"]:
        sal = grad_cam(model, images, TARGETS, path=path)
        assert torch.equal(sal, torch.zeros_like(sal)), path
        # differentiable and still finite
        sal = grad_cam(model, images, TARGETS, path=path, create_graph=True)
        sal.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), path
        model.zero_grad()


def test_zero_target_activation_is_zeros_not_nan(images: Tensor) -> None:
    model = small_cnn()
    with torch.no_grad():  # the layer Grad-CAM reads outputs exactly zero
        model[3].weight.zero_()
        model[3].bias.zero_()
    for layer in ("auto", "3"):
        sal = grad_cam(model, images, TARGETS, layer=layer)
        assert torch.equal(sal, torch.zeros_like(sal))


def test_tiny_range_map_normalises_to_full_range(images: Tensor) -> None:
    model = make_model("test_resnet")
    ref = grad_cam(model, images, TARGETS)
    with torch.no_grad():
        model.fc.weight.mul_(1e-3)  # Grad-CAM is linear in W: same map, 1000x smaller
    raw = grad_cam(model, images, TARGETS, normalize=False)
    assert raw.max() < 1e-4
    assert (raw.flatten(1).amax(1) - raw.flatten(1).amin(1)).min() < 1e-4
    sal = grad_cam(model, images, TARGETS)
    assert_full_range(sal)
    assert torch.allclose(sal, ref, atol=1e-4)


# -- differentiability ---------------------------------------------------------------------

GRAD_CASES = [(n, p) for n in CNNS for p in ALLOWED[n]] + [(n, "hook") for n in CNNS] + [("test_vit", "autograd")]


@pytest.mark.parametrize("name,path", GRAD_CASES)
def test_create_graph_reaches_trunk_and_head(name: str, path: str, images: Tensor) -> None:
    model = make_model(name)  # a fresh model: the head probe of the first call must not break backward
    cam = GradCAM(model, layer=CNN_LAYERS[name], path="auto") if path == "hook" else GradCAM(model, path=path)
    sal = cam(images, TARGETS, create_graph=True)
    assert cam.last_path == ("autograd" if path == "hook" else path)
    assert sal.requires_grad
    mask = torch.zeros_like(sal)
    mask[..., 16:48, 16:48] = 1
    loss = F.binary_cross_entropy(sal.clamp(1e-4, 1 - 1e-4), mask)
    loss.backward()
    params = dict(model.named_parameters())
    for pname in (STEM[name], CLASSIFIER[name]):
        g = params[pname].grad
        assert g is not None, pname
        assert torch.isfinite(g).all() and g.abs().sum() > 0, pname


@pytest.mark.parametrize("path", ["closed_form", "pooled", "autograd", "hook"])
def test_without_create_graph_nothing_requires_grad(path: str, images: Tensor) -> None:
    model = make_model("test_resnet")
    cam = GradCAM(model, layer="layer4") if path == "hook" else GradCAM(model, path=path)
    out = cam.explain(images, TARGETS)
    assert not out.saliency.requires_grad and not out.logits.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", ["test_resnet", "test_efficientnet"])
def test_closed_form_gradients_equal_autograd_gradients(name: str, images: Tensor) -> None:
    model = make_model(name)

    def param_grads(path: str, normalize: bool) -> dict[str, Tensor]:
        model.zero_grad(set_to_none=True)
        grad_cam(model, images, TARGETS, path=path, normalize=normalize, create_graph=True).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for normalize, tol in ((False, 1e-5), (True, 1e-3)):
        closed, auto = param_grads("closed_form", normalize), param_grads("autograd", normalize)
        assert closed.keys() == auto.keys() and STEM[name] in auto and CLASSIFIER[name] in auto
        for n in auto:
            assert rel_err(closed[n], auto[n]) < tol, (n, normalize)


@pytest.mark.parametrize("model_fn", [lambda: make_model("test_resnet"), lambda: small_cnn(bn=True).train()],
                         ids=["timm_eval", "plain_cnn_train"])
@pytest.mark.parametrize("create_graph", [False, True])
def test_an_earlier_graph_survives_the_first_call(model_fn, create_graph: bool, images: Tensor) -> None:
    # A training step computes logits, then the saliency loss, then one backward. The first
    # Grad-CAM call probes the model (head linearity or the last spatial layer) and restores its
    # BatchNorm buffers; that must not invalidate the graph of the logits.
    model = model_fn()
    logits = model(images)
    sal = grad_cam(model, images, TARGETS, create_graph=create_graph)
    (F.cross_entropy(logits, torch.tensor(TARGETS)) + sal.mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# -- model state ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_mode_is_left_alone(name: str, train: bool, images: Tensor) -> None:
    model = make_model(name, eval_mode=not train)
    layer = CNN_LAYERS.get(name, "blocks.5.norm1")
    if train:  # mixed modes must survive too
        next(m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm))).eval()
    before = [m.training for m in model.modules()]
    for kw in ({}, {"create_graph": True}, {"layer": layer}, {"layer": layer, "create_graph": True}):
        grad_cam(model, images, TARGETS, **kw)
        assert [m.training for m in model.modules()] == before, kw


@pytest.mark.parametrize("name", CNNS)
def test_eval_batchnorm_statistics_untouched(name: str, images: Tensor) -> None:
    model = make_model(name)
    before = {k: v.clone() for k, v in model.named_buffers()}
    for path in ALLOWED[name]:
        for cg in (False, True):
            grad_cam(model, images, TARGETS, path=path, create_graph=cg)
    grad_cam(model, images, TARGETS, layer=CNN_LAYERS[name], create_graph=True)
    for k, v in model.named_buffers():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("model_fn", [lambda: make_model("test_resnet", eval_mode=False),
                                      lambda: small_cnn(bn=True).train()], ids=["timm", "plain_cnn"])
def test_train_mode_updates_statistics_as_one_forward_does(model_fn, images: Tensor) -> None:
    # The probes (head linearity, last spatial layer) must not count as extra forward passes.
    a, b = model_fn(), model_fn()
    a(images)
    grad_cam(b, images, TARGETS)
    for (k, va), vb in zip(a.named_buffers(), b.buffers()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("name", TINY_MODELS)
def test_batch_of_one_equals_row_of_batch(name: str, images: Tensor) -> None:
    model = make_model(name)
    full = grad_cam(model, images, TARGETS)
    raw = grad_cam(model, images, TARGETS, normalize=False)
    for i, t in enumerate(TARGETS):
        one = grad_cam(model, images[i:i + 1], t)
        assert torch.allclose(one, full[i:i + 1], atol=1e-4), i
        assert rel_err(grad_cam(model, images[i:i + 1], [t], normalize=False), raw[i:i + 1]) < 1e-5, i


def test_input_is_not_modified(images: Tensor) -> None:
    x = images.clone().requires_grad_(True)
    sal = grad_cam(make_model("test_resnet"), x, TARGETS, layer="layer4", create_graph=True)
    assert torch.equal(x.detach(), images) and x.grad is None
    sal.sum().backward()


# -- hooks ---------------------------------------------------------------------------------


def test_no_hook_leaks_through_calls_and_failures() -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 32, 32)
    with GradCAM(model, layer="layer4") as cam:
        for i in range(100):
            if i % 10 == 3:
                with pytest.raises(InputError, match="target"):
                    cam(x, NUM_CLASSES + i)
            elif i % 10 == 7:
                with pytest.raises(InputError, match="4-D"):
                    cam(x[0])
            else:
                cam(x, i % NUM_CLASSES, create_graph=i % 5 == 0)
            assert not hooks_on(model), i
    assert not hooks_on(model)


def test_no_hook_leaks_when_the_block_raises() -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="boom"):
        with GradCAM(model, layer="layer4") as cam:
            cam(x)
            raise RuntimeError("boom")
    assert not hooks_on(model)


def test_no_hook_leaks_from_the_layer_probe(images: Tensor) -> None:
    model = small_cnn()
    grad_cam(model, images)
    assert not hooks_on(model)

    class TinyMLP(nn.Sequential):
        pass

    mlp = TinyMLP(nn.Flatten(), nn.Linear(3 * 64 * 64, NUM_CLASSES))
    with pytest.raises(egl.UnsupportedModelError):
        grad_cam(mlp, images)
    assert not hooks_on(mlp)



def _stride4_cnn() -> nn.Module:
    """Its last conv (``"2"``) is 1x1 on 4x4 images (no map to explain) and 4x4 on 16x16 ones."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 4, stride=4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES)).eval()


def test_the_layer_probe_depends_on_the_input_size_not_on_the_first_call() -> None:
    """Probed first on 4x4 images ("2" gives 1x1: "1" is the last map), then on 16x16 ones,
    where "3" (after the stride-4 conv) is the last map: the first answer must not stick."""
    model = _stride4_cnn()
    small, large = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 16, 16)
    cam = GradCAM(model)
    cam(small)
    assert cam.target_layer == "1"
    got = cam(large)
    assert cam.target_layer == "3"
    torch.testing.assert_close(got, GradCAM(model, layer="3")(large))
    assert grad_cam(_stride4_cnn(), large).shape == (2, 1, 16, 16)
    fresh = _stride4_cnn()
    grad_cam(fresh, small)  # a module-level cache keyed on the model alone kept "1" for it
    torch.testing.assert_close(grad_cam(fresh, large), grad_cam(fresh, large, layer="3"))
    cam(small)
    assert cam.target_layer == "1"

def test_hook_is_not_left_when_the_model_raises(images: Tensor) -> None:
    model = small_cnn()

    class Boom(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise RuntimeError("boom in forward")

    model[4] = Boom()
    with pytest.raises(RuntimeError, match="boom in forward"):
        grad_cam(model, images, layer="3")
    assert not hooks_on(model)


# -- ViT -----------------------------------------------------------------------------------


def test_vit_auto_target_is_last_blocks_norm1(images: Tensor) -> None:
    model = make_model("test_vit")
    cam = GradCAM(model, upsample=False)
    assert cam.target_layer == f"blocks.{len(model.blocks) - 1}.norm1" == "blocks.5.norm1"
    sal = cam(images, TARGETS)
    assert sal.shape == (4, 1, 4, 4) and cam.last_path == "autograd"
    neg = grad_cam(model, images, TARGETS, layer="blocks.-1.norm1", upsample=False)
    assert torch.equal(neg, sal)


def _manual_vit_cam(model: nn.Module, x: Tensor, target: list[int], grid: tuple[int, int]) -> Tensor:
    """Grad-CAM on the last block's norm1 tokens, laid out by hand (row-major patches, prefix dropped)."""
    store = {}
    h = model.blocks[-1].norm1.register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        logits = model(x)
    finally:
        h.remove()
    a = store["a"]
    g = torch.autograd.grad(logits.gather(1, torch.tensor(target)[:, None]).sum(), a)[0]
    p = model.num_prefix_tokens
    a, g = a[:, p:].detach(), g[:, p:]
    b, n, c = a.shape
    a = a.reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)
    g = g.reshape(b, grid[0], grid[1], c).permute(0, 3, 1, 2)
    return torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))


def test_vit_matches_a_manual_computation(images: Tensor) -> None:
    model = make_model("test_vit")
    ref = _manual_vit_cam(model, images, TARGETS, (4, 4))
    assert rel_err(grad_cam(model, images, TARGETS, upsample=False, normalize=False), ref) < 1e-5


def test_vit_non_square_input_with_dynamic_img_size() -> None:
    model = make_model("test_vit", dynamic_img_size=True)
    x = torch.randn(2, 3, 48, 64)
    small = grad_cam(model, x, [1, 2], upsample=False, normalize=False)
    assert small.shape == (2, 1, 3, 4)
    assert rel_err(small, _manual_vit_cam(model, x, [1, 2], (3, 4))) < 1e-5
    sal = grad_cam(model, x, [1, 2])
    assert sal.shape == (2, 1, 48, 64) and sal.min() >= 0 and sal.max() <= 1


def test_vit_with_average_pool_takes_the_pooled_path(images: Tensor) -> None:
    model = make_model("test_vit", global_pool="avg")
    cam = GradCAM(model, normalize=False, upsample=False)
    pooled = cam(images, TARGETS)
    assert cam.target_layer == "forward_features" and cam.last_path == "pooled"
    auto = GradCAM(model, normalize=False, upsample=False, path="autograd")
    ref = auto(images, TARGETS)
    assert auto.last_path == "autograd"
    assert pooled.shape == (4, 1, 4, 4)
    assert rel_err(pooled, ref) < 1e-5
    sal = cam(images, TARGETS, create_graph=True)
    sal.sum().backward()
    assert model.head.weight.grad.abs().sum() > 0 and model.patch_embed.proj.weight.grad.abs().sum() > 0


# -- non-timm models -------------------------------------------------------------------------


def test_plain_cnn_resolves_its_last_spatial_layer(images: Tensor) -> None:
    model = small_cnn()
    cam = GradCAM(model, normalize=False)
    assert cam.target_layer is None  # resolved on the first call, from the input
    sal = cam(images, TARGETS)
    assert cam.target_layer == "3" and cam.last_path == "autograd"
    assert torch.equal(sal, grad_cam(model, images, TARGETS, layer="3", normalize=False))
    ref = captum_grad_cam(model, "3", images, torch.tensor(TARGETS), (64, 64))
    assert rel_err(sal, ref) < 1e-5
    assert grad_cam(model, images, upsample=False).shape == (4, 1, 32, 32)


def test_model_without_spatial_layer_is_unsupported(images: Tensor) -> None:
    class TinyMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

    with pytest.raises(egl.UnsupportedModelError, match=r"TinyMLP.*layer=") as info:
        grad_cam(TinyMLP(), images)
    assert isinstance(info.value, egl.EGLError)


# -- bad input -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return make_model("test_resnet")


def test_wrong_rank_input(resnet: nn.Module, images: Tensor) -> None:
    with pytest.raises(InputError, match=r"'x' expected a 4-D tensor of shape \[B, C, H, W\], got .*\[3, 64, 64\]"):
        grad_cam(resnet, images[0])
    with pytest.raises(InputError, match="'x' expected a floating-point tensor"):
        grad_cam(resnet, images.long())
    with pytest.raises(InputError, match="'x' expected at least one image"):
        grad_cam(resnet, images[:0])


@pytest.mark.parametrize("target", [NUM_CLASSES, -1, [0, 1, 2, NUM_CLASSES + 3]])
@pytest.mark.parametrize("layer", ["auto", "layer4"])
def test_target_out_of_range_names_the_range(resnet: nn.Module, images: Tensor, target, layer: str) -> None:
    with pytest.raises(InputError, match=rf"'target' expected class indices in \[0, {NUM_CLASSES - 1}\]"):
        grad_cam(resnet, images, target, layer=layer)


@pytest.mark.parametrize("target,match", [
    ([0, 1, 2], r"one class index per sample \(shape \[4\]\)"),
    (torch.tensor([[0, 1, 2, 3]]), r"one class index per sample \(shape \[4\]\)"),
    (1.0, "an int, a list of ints or a LongTensor"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "an integer tensor of class indices"),
    ([0, 1.5, 2, 3], "a list of int class indices"),
    (True, "not booleans"),
    ("cat", "an int, a list of ints or a LongTensor"),
])
def test_bad_target(resnet: nn.Module, images: Tensor, target, match: str) -> None:
    with pytest.raises(InputError, match=match):
        grad_cam(resnet, images, target)


def test_bad_layer_lists_children(resnet: nn.Module) -> None:
    with pytest.raises(InputError, match=r"'layer5' is not a child of ResNet; children there are \[.*'layer4'"):
        GradCAM(resnet, layer="layer5")
    with pytest.raises(InputError, match=r"'7' is not a child of layer4; children there are \['0'\]"):
        GradCAM(resnet, layer="layer4.7")
    with pytest.raises(InputError, match="'layer' expected 'auto', a dotted module path such as 'layer4', or a "
                                         "submodule of the model, got int 4"):
        GradCAM(resnet, layer=4)  # type: ignore[arg-type]


def test_bad_path(resnet: nn.Module) -> None:
    with pytest.raises(InputError, match=r"'path' expected one of \['auto', 'closed_form', 'pooled', 'autograd'\]"):
        GradCAM(resnet, path="closed")


def test_bad_model() -> None:
    with pytest.raises(InputError, match="'model' expected a torch.nn.Module"):
        GradCAM(lambda x: x)  # type: ignore[arg-type]


def test_layer_with_non_spatial_output(resnet: nn.Module, images: Tensor) -> None:
    with pytest.raises(egl.UnsupportedModelError, match=r"layer 'fc' outputs shape \[4, 5\]"):
        grad_cam(resnet, images, layer="fc")


def test_layer_not_on_the_path_to_the_logits(images: Tensor) -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()
            self.unused = nn.Conv2d(3, 3, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

    model = WithSpare()
    with pytest.raises(egl.UnsupportedModelError, match="'unused' was not called"):
        grad_cam(model, images, layer="unused")


def test_input_on_another_device_than_the_model(resnet: nn.Module, images: Tensor) -> None:
    # the meta device stands in for a GPU: the check must fire before any computation
    with pytest.raises(InputError, match=r"'x' expected a tensor on the model's device \(cpu\).*x.to\('cpu'\)"):
        grad_cam(resnet, images.to("meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_input_on_the_wrong_device(resnet: nn.Module, images: Tensor) -> None:
    with pytest.raises(InputError, match="model's device"):
        grad_cam(resnet, images.cuda())


@pytest.mark.parametrize("kw", [{}, {"path": "pooled"}, {"layer": "layer4"}])
def test_works_under_no_grad_and_refuses_inference_mode(resnet: nn.Module, images: Tensor, kw: dict) -> None:
    ref = grad_cam(resnet, images, TARGETS, **kw)
    with torch.no_grad():
        assert torch.allclose(grad_cam(resnet, images, TARGETS, **kw), ref, atol=1e-6)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        with pytest.raises(InputError, match=r"outside torch.inference_mode\(\).*Use torch.no_grad\(\) instead"):
            grad_cam(resnet, images, TARGETS, **kw)


class _ChannelsLastNet(nn.Module):
    """A stage that emits NHWC maps (as timm's Swin, MambaOut and Sequencer stages do)."""

    def __init__(self, nhwc: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.nhwc = nhwc
        self.stem = nn.Conv2d(3, 12, 4, stride=4)
        self.stage = nn.Sequential(nn.Conv2d(12, 24, 2, stride=2), nn.GELU())
        self.head = nn.Linear(24, 5)
        if nhwc:
            self.stage.append(_Permute())

    def forward(self, x: Tensor) -> Tensor:
        f = self.stage(self.stem(x))
        return self.head(f.mean((1, 2) if self.nhwc else (2, 3)))


class _Permute(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 2, 3, 1)


@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_a_named_layer_with_channels_last_output_is_read_as_nhwc(size: tuple[int, int]) -> None:
    """[B, 8, 8, 24] from a 64 px input is a map of 8x8 with 24 channels, not 24 channels... read
    wrongly as NCHW it would be an 8x24 map of 8 channels: a silently wrong answer."""
    from egl.backbones import map_layout

    x, y = torch.randn(2, 3, *size), torch.tensor([1, 3])
    nchw, nhwc = _ChannelsLastNet(False).eval(), _ChannelsLastNet(True).eval()
    nhwc.load_state_dict(nchw.state_dict())
    ref = grad_cam(nchw, x, y, layer="stage")
    torch.testing.assert_close(grad_cam(nhwc, x, y, layer="stage"), ref)
    h, w = size[0] // 8, size[1] // 8
    assert map_layout(nhwc, torch.zeros(2, h, w, 24), size) == "NHWC"
    assert map_layout(nchw, torch.zeros(2, 24, h, w), size) == "NCHW"
    ambiguous = torch.zeros(2, 8, 8, 8)  # both readings fit: the model's output_fmt decides
    assert map_layout(nchw, ambiguous, (64, 64)) == "NCHW"
    nhwc.output_fmt = "NHWC"
    assert map_layout(nhwc, ambiguous, (64, 64)) == "NHWC"


def test_a_swin_stage_named_by_layer_gives_hand_written_grad_cam() -> None:
    """timm's Swin stages emit [B, H, W, C]; Grad-CAM at `layers.1` must read them so."""
    import torch.nn.functional as F

    model = make_model("swin_tiny_patch4_window7_224", embed_dim=16, depths=(1, 1), num_heads=(1, 2),
                       img_size=64, window_size=4)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    store = {}
    h = model.layers[1].register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        logits = model(x)
    finally:
        h.remove()
    a = store["a"]  # [2, 8, 8, 32]
    g = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), a)[0]
    cam = torch.relu((g.mean((1, 2), keepdim=True) * a).sum(-1)).unsqueeze(1).detach()
    cam = F.interpolate(cam, size=(64, 64), mode="bilinear", align_corners=False)
    lo, hi = cam.amin((1, 2, 3), keepdim=True), cam.amax((1, 2, 3), keepdim=True)
    torch.testing.assert_close(grad_cam(model, x, y, layer="layers.1"), (cam - lo) / (hi - lo),
                               atol=1e-5, rtol=1e-5)
