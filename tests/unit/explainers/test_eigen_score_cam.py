"""Eigen-CAM and Score-CAM: each against its paper's algorithm computed naively in float64 from
hooked activations (an SVD per image; a forward pass per image and channel), the choices where
the papers are silent, and their errors.

(The contract tests in tests/contract/ enrol both: output, functional form, create_graph
refused, hooks, batch of one.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model
from torch import Tensor, nn

import egl
from egl import recipes
from egl.backbones import _module
from egl.explainers import EigenCAM, ScoreCAM, class_maps, eigen_cam, score_cam
from egl.explainers.eigen_cam import principal_projection


def _activations(model: nn.Module, layer: str, x: Tensor) -> Tensor:
    store = {}
    handle = _module(model, layer, "test").register_forward_hook(lambda m, i, o: store.setdefault("a", o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["a"].double()


def _minmax(m: Tensor) -> Tensor:
    lo, hi = m.amin(dim=(-2, -1), keepdim=True), m.amax(dim=(-2, -1), keepdim=True)
    return torch.where(hi > lo, (m - lo) / (hi - lo), torch.zeros_like(m))


# -- Eigen-CAM -----------------------------------------------------------------------------------
def _svd_projection(a: Tensor, center: bool) -> Tensor:
    """``A v_1`` by SVD, image by image, signed to agree with the channels' sum."""
    out = []
    for img in a:
        m = img.flatten(1).T  # [hw, C]
        total = m.sum(1)
        if center:
            m = m - m.mean(0, keepdim=True)
        v = torch.linalg.svd(m, full_matrices=False)[2][0]
        p = m @ v
        out.append((p if (p * total).sum() >= 0 else -p).view(1, *img.shape[-2:]))
    return torch.stack(out)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize("shape", [(3, 16, 4, 4), (3, 5, 4, 4)])  # fewer positions than channels, and more
def test_the_projection_is_the_first_singular_direction(shape: tuple[int, ...], center: bool) -> None:
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).relu()
    got = principal_projection(a, center=center)
    torch.testing.assert_close(got, _svd_projection(a, center), rtol=1e-7, atol=1e-9)
    assert principal_projection(a.float(), center=center).dtype == torch.float32


def test_the_sign_makes_post_relu_maps_non_negative_and_zeros_stay_zeros() -> None:
    a = torch.rand(2, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    assert (principal_projection(a) >= 0).all()  # the first component of a non-negative matrix
    zero = principal_projection(torch.zeros(1, 8, 3, 3))
    assert torch.equal(zero, torch.zeros(1, 1, 3, 3))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_eigen_cam_matches_the_paper_on_a_model_and_has_no_class(layer: str) -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    want = _minmax(F.interpolate(_svd_projection(_activations(model, layer, x), False).relu(), size=(64, 64),
                                 mode="bilinear", align_corners=False))
    cam = EigenCAM(model, layer)
    torch.testing.assert_close(cam(x, [0, 3]).double(), want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cam(x, [1, 2]), cam(x, [0, 3]))  # the same map whatever the class
    torch.testing.assert_close(eigen_cam(model, x, layer=layer, center=True),
                               EigenCAM(model, layer, center=True)(x))


def test_eigen_cam_refuses_training_use_and_bad_options() -> None:
    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match=r"'create_graph' expected False for this explainer"):
        EigenCAM(model)(torch.randn(1, 3, 64, 64), create_graph=True)
    with pytest.raises(egl.InputError, match=r"'center' expected"):
        EigenCAM(model, center="yes")
    with pytest.raises(egl.InputError, match=r"'explainer' expected a differentiable explainer"):
        recipes.align(model, explainer="eigen_cam")


# -- Score-CAM -----------------------------------------------------------------------------------
def _score_cam_reference(model: nn.Module, layer: str, x: Tensor, targets: list[int]) -> Tensor:
    """The authors' loop: per image and channel, mask by the normalised upsampled channel, take
    the softmax probability of the target; skip constant channels; ReLU; min-max."""
    a = _activations(model, layer, x)
    maps = []
    for b in range(x.shape[0]):
        total = torch.zeros(x.shape[-2:], dtype=torch.float64)
        for k in range(a.shape[1]):
            up = F.interpolate(a[b:b + 1, k:k + 1], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            if up.max() == up.min():
                continue
            mask = (up - up.min()) / (up.max() - up.min())
            with torch.no_grad():
                p = model((x[b] * mask.float())[None]).double().softmax(1)[0, targets[b]]
            total += p * up
        maps.append(total.relu())
    return _minmax(torch.stack(maps)[:, None])


@pytest.mark.parametrize("batch_size", [1, 5, 64])  # one masked image per pass, a remainder, all at once
def test_score_cam_matches_the_authors_loop(batch_size: int) -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    want = _score_cam_reference(model, "layer3", x, [0, 3])
    got = ScoreCAM(model, "layer3", batch_size=batch_size)(x, [0, 3])
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(score_cam(model, x, [0, 3], layer="layer3"), got, rtol=1e-5, atol=1e-6)


def test_a_constant_channel_gets_no_weight() -> None:
    model = make_model("test_resnet")
    cam = ScoreCAM(model, "layer3")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    acts = _activations(model, "layer3", x).float()
    acts[:, 0] = 5.0  # a constant channel: its mask would be 0/0
    w = cam.channel_scores(x, acts, torch.tensor([1]))
    assert w[0, 0] == 0 and (w[0, 1:][acts[0, 1:].flatten(1).std(1) > 0] > 0).all()
    assert torch.isfinite(w).all()


def test_score_cam_errors_name_the_argument() -> None:
    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match=r"'batch_size' expected an int >= 1, got 0"):
        ScoreCAM(model, batch_size=0)
    with pytest.raises(egl.InputError, match=r"'create_graph' expected False"):
        ScoreCAM(model)(torch.randn(1, 3, 32, 32), create_graph=True)
    with pytest.raises(egl.InputError, match=r"'weighting' expected a Grad-CAM variant.*got ScoreCAM.*per class"):
        class_maps(model, torch.randn(1, 3, 32, 32), weighting=ScoreCAM(model))


@pytest.mark.parametrize("name", ["eigen_cam", "score_cam"])
@pytest.mark.parametrize("arch", ["test_resnet", "test_vit", "test_convnext"])
def test_one_forward_no_backward_on_cnns_and_vits(name: str, arch: str) -> None:
    """Eigen-CAM ran Grad-CAM's autograd path at inner layers: a backward whose gradient went unused."""
    model = make_model(arch)
    size = 32 if arch == "test_vit" else 64
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    kwargs = {"batch_size": 16} if name == "score_cam" else {}
    layers = ["auto", "layer3"] if arch == "test_resnet" else ["auto"]
    for layer in layers:
        cam = egl.create("explainer", name, model, layer, **kwargs)
        out = cam.explain(x, [0, 1])
        assert cam.last_path == "forward" and out.logits.grad_fn is None and out.saliency.grad_fn is None
        assert out.saliency.shape == (2, 1, size, size) and torch.isfinite(out.saliency).all()
        assert all(p.grad is None for p in model.parameters())


def test_score_cam_keeps_to_batch_size_with_more_images_than_it() -> None:
    model = make_model("test_resnet")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, inp: sizes.append(inp[0].shape[0]))
    try:
        got = ScoreCAM(model, "layer3", batch_size=2)(x, [0, 1, 2])
    finally:
        handle.remove()
    assert sizes[0] == 3 and max(sizes[1:]) <= 2  # the activations' pass, then the masked images
    c = _activations(model, "layer3", x).shape[1]  # 2 images a block (1 channel a pass), then the last alone (2)
    assert len(sizes) - 1 == c + c // 2
    torch.testing.assert_close(got, ScoreCAM(model, "layer3")(x, [0, 1, 2]), rtol=1e-5, atol=1e-6)


def test_eigen_cam_answers_nan_for_non_finite_activations_and_checks_shape() -> None:
    a = torch.rand(2, 4, 3, 3)
    a[1, 0, 0, 0] = float("nan")
    p = principal_projection(a)
    assert torch.isfinite(p[0]).all() and torch.isnan(p[1]).all()
    torch.testing.assert_close(p[0], principal_projection(a[:1])[0])
    with pytest.raises(egl.InputError, match=r"principal_projection: 'a' expected"):
        principal_projection(torch.rand(2, 4, 9))
    huge = torch.rand(2, 4, 3, 3)
    huge[1] *= 1e25  # finite, but its Gram matrix overflows float32
    torch.testing.assert_close(principal_projection(huge)[1] / 1e25, principal_projection(huge[1:] / 1e25)[0])
    with pytest.raises(egl.InputError, match=r"'weighting' expected a Grad-CAM variant.*got EigenCAM.*Call "
                       r"EigenCAM\(model\)\(x\) once"):
        class_maps(make_model("test_resnet"), torch.randn(1, 3, 32, 32), weighting=EigenCAM(make_model("test_resnet")))
