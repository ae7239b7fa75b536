"""egl.metrics.deletion / insertion: RISE curves and their areas, batched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import nn

import egl
from egl.metrics import CurveResult, deletion, insertion


class Recorder(nn.Module):
    """Counts forward calls and keeps their inputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return self.inner(x)


def _linear(weights0: list[float]) -> nn.Module:
    """1x4x4 images -> 2 logits: class 0 = sum(w * x), class 1 = 0."""
    lin = nn.Linear(16, 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0] = torch.tensor(weights0)
    return nn.Sequential(nn.Flatten(), lin).eval()


def _cnn(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, classes)).eval()


def naive(model: nn.Module, x: torch.Tensor, sal: torch.Tensor, steps: int, baseline: str, insert: bool,
          blur_sigma: float = 5.0) -> torch.Tensor:
    """One image and one step at a time, pixels ordered by a Python sort: ``[B, steps + 1]``."""
    b, _, h, w = x.shape
    if sal.shape[-2:] != x.shape[-2:]:
        sal = F.interpolate(sal, size=(h, w), mode="bilinear", align_corners=False)
    curves = torch.zeros(b, steps + 1)
    with torch.no_grad():
        for i in range(b):
            xi = x[i:i + 1]
            if baseline == "zero":
                base = torch.zeros_like(xi)
            elif baseline == "mean":
                base = xi.mean(dim=(2, 3), keepdim=True).expand_as(xi)
            else:
                r = math.ceil(3 * blur_sigma)
                base = gaussian_blur2d(xi, (2 * r + 1, 2 * r + 1), (blur_sigma, blur_sigma), border_type="replicate")
            cls = int(model(xi).argmax())
            vals = sal[i, 0].flatten().tolist()
            order = sorted(range(h * w), key=lambda j: (-vals[j], j))
            start, finish = (base, xi) if insert else (xi, base)
            for t in range(steps + 1):
                n = math.floor(t * h * w / steps + 0.5)
                moved = torch.zeros(h * w, dtype=torch.bool)
                moved[order[:n]] = True
                img = torch.where(moved.view(1, 1, h, w), finish, start)
                curves[i, t] = model(img).softmax(1)[0, cls]
    return curves


@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
@pytest.mark.parametrize("insert", [False, True])
def test_equals_one_image_at_a_time(baseline: str, insert: bool) -> None:
    torch.manual_seed(1)
    model = _cnn()
    x = torch.randn(3, 3, 7, 9)
    sal = torch.rand(3, 1, 3, 4)  # another resolution: resized before ranking
    fn = insertion if insert else deletion
    r = fn(model, x, sal, steps=10, baseline=baseline, batch_size=7, blur_sigma=1.5)
    ref = naive(model, x, sal, 10, baseline, insert, blur_sigma=1.5)
    torch.testing.assert_close(r.curve, ref, rtol=1e-5, atol=1e-6)
    fractions = torch.tensor([math.floor(t * 63 / 10 + 0.5) / 63 for t in range(11)])
    torch.testing.assert_close(r.fractions, fractions)
    torch.testing.assert_close(r.auc_per_image, torch.trapezoid(ref, fractions, dim=1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.auc, r.auc_per_image.mean())
    assert isinstance(r, CurveResult)


def test_closed_form_on_a_linear_model() -> None:
    # Class 0's logit is 4 x0 + 3 x1 + 2 x2 + 1 x3 on a 4x4 image of ones; the map ranks pixels
    # 0, 1, 4, 5, 2, 3, ...: deleting one pixel per step leaves logits 10, 6, 3, 3, 3, 1, 0, ...
    model = _linear([4.0, 3.0, 2.0, 1.0] + [0.0] * 12)
    order = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    s = torch.empty(16)
    s[order] = torch.arange(16, 0, -1, dtype=torch.float32)
    x = torch.ones(1, 1, 4, 4)
    r = deletion(model, x, s.view(1, 1, 4, 4), steps=16)
    logits = torch.tensor([10.0, 6, 3, 3, 3, 1] + [0.0] * 11)
    torch.testing.assert_close(r.curve[0], torch.sigmoid(logits))
    expected = (torch.sigmoid(logits)[:-1] + torch.sigmoid(logits)[1:]).sum() / 2 / 16
    torch.testing.assert_close(r.auc, expected)
    assert int(r.target) == 0 and float(r.prob) == pytest.approx(float(torch.sigmoid(torch.tensor(10.0))))
    # insertion from zeros puts the same pixels back: the curve read backwards over the moved share
    ins = insertion(model, x, s.view(1, 1, 4, 4), steps=16, baseline="zero")
    back = torch.sigmoid(torch.tensor([0.0, 4, 7, 7, 7, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10]))
    torch.testing.assert_close(ins.curve[0], back)


def test_a_right_map_scores_better_than_its_reverse() -> None:
    model = _linear([4.0, 3.0, 2.0, 1.0] + [0.0] * 12)
    x = torch.rand(4, 1, 4, 4) + 0.5
    good = torch.tensor([4.0, 3.0, 2.0, 1.0] + [0.0] * 12).view(1, 1, 4, 4).expand(4, 1, 4, 4)
    bad = -good
    assert float(deletion(model, x, good, steps=16, target=torch.zeros(4, dtype=torch.long)).auc) < \
        float(deletion(model, x, bad, steps=16, target=torch.zeros(4, dtype=torch.long)).auc)
    assert float(insertion(model, x, good, steps=16, baseline="zero", target=torch.zeros(4, dtype=torch.long)).auc) > \
        float(insertion(model, x, bad, steps=16, baseline="zero", target=torch.zeros(4, dtype=torch.long)).auc)


def test_ties_go_in_raster_order_and_chunks_stay_within_batch_size() -> None:
    model = Recorder(_linear([1.0] * 16))
    x = torch.ones(2, 1, 4, 4)
    r = deletion(model, x, torch.zeros(2, 1, 4, 4), steps=4, batch_size=3)
    assert [len(t) for t in model.inputs] == [3, 3, 3, 1]  # (4 + 1) points x 2 images
    images = torch.cat(model.inputs).view(5, 2, 16)
    for t in range(5):
        expected = torch.ones(16)
        expected[:4 * t] = 0  # the first 4 t pixels in raster order
        assert torch.equal(images[t, 0], expected) and torch.equal(images[t, 1], expected)
    assert r.curve.shape == (2, 5)


def test_target_and_unperturbed_probability() -> None:
    model = _cnn(4)
    x = torch.randn(5, 3, 8, 8)
    probs = model(x).softmax(1).detach()
    target = torch.tensor([3, 2, 1, 0, 3])
    for fn in (deletion, insertion):
        r = fn(model, x, torch.rand(5, 1, 8, 8), steps=8, target=target)
        assert torch.equal(r.target, target)
        torch.testing.assert_close(r.prob, probs[torch.arange(5), target])
        r = fn(model, x, torch.rand(5, 1, 8, 8), steps=8)
        assert torch.equal(r.target, probs.argmax(1))


def test_no_gradient_graph_and_model_mode_kept() -> None:
    model = _cnn().train()
    model[2].eval()  # (a mode a test can see is left alone)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    s = torch.rand(2, 1, 8, 8, requires_grad=True)
    r = deletion(model, x, s, steps=4)
    assert r.auc.grad_fn is None and model.training and not model[2].training


def test_steps_one_is_two_points() -> None:
    r = insertion(_cnn(), torch.randn(2, 3, 5, 5), torch.rand(2, 1, 5, 5), steps=1, baseline="mean")
    assert r.curve.shape == (2, 2) and r.fractions.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("kwargs, arg", [
    ({"steps": 0}, "steps"),
    ({"steps": 65}, "steps"),
    ({"steps": 10.0}, "steps"),
    ({"steps": True}, "steps"),
    ({"baseline": "noise"}, "baseline"),
    ({"batch_size": 0}, "batch_size"),
    ({"baseline": "blur", "blur_sigma": 100.0}, "blur_sigma"),
    ({"target": torch.tensor([0, 9])}, "target"),
])
def test_bad_arguments_are_named(kwargs: dict, arg: str) -> None:
    with pytest.raises(egl.InputError, match=f"'{arg}'"):
        deletion(_cnn(), torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), **kwargs)


def test_bad_tensors_are_named() -> None:
    model, x, s = _cnn(), torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    with pytest.raises(egl.InputError, match="'saliency'"):
        insertion(model, x, s[:1])
    with pytest.raises(egl.InputError, match="'saliency'"):
        insertion(model, x, torch.full_like(s, float("nan")))
    with pytest.raises(egl.InputError, match="'x'"):
        insertion(model, x[0], s)
    with pytest.raises(egl.InputError, match="'model'"):
        insertion(lambda t: t.mean(), x, s, steps=2)
    with pytest.raises(egl.InputError, match="'x' expected at least one image"):
        deletion(model, x[:0], s[:0])


def test_a_bad_target_is_named_before_the_forward_passes() -> None:
    model = Recorder(_cnn())
    with pytest.raises(egl.InputError, match="'target' expected a 1-D integer tensor"):
        deletion(model, torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), target=torch.zeros(2))
    assert model.inputs == []


def test_zero_is_zero_in_the_models_normalised_space() -> None:
    """A model that normalises in its stem (egl's [0, 1] images) gets its mean colour as "zero";
    one without gets 0: deletion's end point and insertion's start are that image's probability."""
    import timm

    from egl.normalization import IMAGENET_MEAN, normalize_inputs

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=5).eval()
    x, s = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    raw = deletion(model, x, s, steps=2, target=torch.tensor([0, 1])).curve[:, -1]
    with torch.no_grad():
        black = F.softmax(model(torch.zeros_like(x)), 1)[torch.arange(2), torch.tensor([0, 1])]
    torch.testing.assert_close(raw, black)
    normalize_inputs(model, "imagenet")
    grey = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand_as(x)
    with torch.no_grad():
        expected = F.softmax(model(grey), 1)[torch.arange(2), torch.tensor([0, 1])]
    torch.testing.assert_close(deletion(model, x, s, steps=2, target=torch.tensor([0, 1])).curve[:, -1], expected)
    start = insertion(model, x, s, steps=2, target=torch.tensor([0, 1]), baseline="zero").curve[:, 0]
    torch.testing.assert_close(start, expected)
    with torch.no_grad():  # black, which the normalising model reads as -mean/std: not what "zero" is
        black_now = F.softmax(model(torch.zeros_like(x)), 1)[torch.arange(2), torch.tensor([0, 1])]
    assert not torch.allclose(expected, black_now)


def test_black_is_zero_in_the_images_space_whatever_the_model_does() -> None:
    import timm

    from egl.normalization import normalize_inputs

    torch.manual_seed(0)
    model = normalize_inputs(timm.create_model("test_resnet", num_classes=5).eval(), "imagenet")
    x, s, t = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32), torch.tensor([0, 1])
    with torch.no_grad():
        black = F.softmax(model(torch.zeros_like(x)), 1)[torch.arange(2), t]
    torch.testing.assert_close(deletion(model, x, s, steps=2, target=t, baseline="black").curve[:, -1], black)
