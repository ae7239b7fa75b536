"""egl.metrics.faithfulness: ERASER sufficiency / comprehensiveness (AOPC), batched."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model
from kornia.filters import gaussian_blur2d
from torch import nn

import egl
from egl.explainers import grad_cam
from egl.metrics import DEFAULT_KS, FaithfulnessResult, faithfulness


class Recorder(nn.Module):
    """Counts forward calls and keeps their inputs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.inputs.append(x.clone())
        return self.inner(x)


def _linear(weights0: list[float]) -> nn.Module:
    """1x4x4 images -> 2 logits: class 0 = sum(w * x), class 1 = 0."""
    lin = nn.Linear(16, 2, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0] = torch.tensor(weights0)
    return nn.Sequential(nn.Flatten(), lin).eval()


# Saliency ranking of the 4x4 grid: the top-left 2x2 block (0, 1, 4, 5), then the top-right
# block (2, 3, 6, 7), then the rest.
_ORDER = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
_WEIGHTS = [4.0, 3.0, 2.0, 1.0] + [0.0] * 12


def _ranked_saliency() -> torch.Tensor:
    s = torch.empty(16)
    s[_ORDER] = torch.arange(16, 0, -1, dtype=torch.float32)
    return s.view(1, 1, 4, 4)


def naive(model: nn.Module, x: torch.Tensor, sal: torch.Tensor, ks: tuple[float, ...],
          baseline: str, blur_sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One image and one perturbation at a time: ``(suff [B, K], comp [B, K])``."""
    b, _, h, w = x.shape
    if sal.shape[-2:] != x.shape[-2:]:
        sal = F.interpolate(sal, size=(h, w), mode="bilinear", align_corners=False)
    suff = torch.zeros(b, len(ks))
    comp = torch.zeros(b, len(ks))
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
            p = model(xi).softmax(1)[0]
            yhat = int(p.argmax())
            vals = sal[i, 0].flatten().tolist()
            order = sorted(range(h * w), key=lambda j: (-vals[j], j))
            for j, k in enumerate(ks):
                n = int(k * h * w / 100 + 0.5)
                top = torch.zeros(h * w, dtype=torch.bool)
                top[order[:n]] = True
                top = top.view(1, 1, h, w)
                comp[i, j] = p[yhat] - model(torch.where(top, base, xi)).softmax(1)[0, yhat]
                suff[i, j] = p[yhat] - model(torch.where(top, xi, base)).softmax(1)[0, yhat]
    return suff, comp


# -- hand-computed ----------------------------------------------------------------------------
def test_hand_computed_zero_baseline() -> None:
    model = _linear(_WEIGHTS)
    x = torch.ones(1, 1, 4, 4)
    r = faithfulness(model, x, _ranked_saliency(), ks=(25, 50))
    sig = torch.sigmoid
    p0 = sig(torch.tensor(10.0))  # logit 4 + 3 + 2 + 1 against 0
    # k=25: top {0, 1, 4, 5}. Removed: logit 2 + 1 = 3; kept only: logit 4 + 3 = 7.
    # k=50: top = rows 0-1, which hold every weight. Removed: logit 0; kept only: logit 10.
    comp = torch.stack([p0 - sig(torch.tensor(3.0)), p0 - 0.5])
    suff = torch.stack([p0 - sig(torch.tensor(7.0)), torch.tensor(0.0)])
    torch.testing.assert_close(r.comprehensiveness_per_image[0], comp)
    torch.testing.assert_close(r.sufficiency_per_image[0], suff)
    torch.testing.assert_close(r.comprehensiveness, comp.mean())
    torch.testing.assert_close(r.sufficiency, suff.mean())
    torch.testing.assert_close(r.prob, p0.view(1))
    assert r.target.tolist() == [0]
    assert r.num_pixels == (4, 8)


def test_hand_computed_mean_baseline() -> None:
    model = _linear(_WEIGHTS)
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4) / 10  # pixel i = i / 10
    m = x.mean()  # 0.75: what removed pixels become
    r = faithfulness(model, x, _ranked_saliency(), ks=(25,), baseline="mean")
    logit = lambda v0, v1, v2, v3: 4 * v0 + 3 * v1 + 2 * v2 + 1 * v3  # noqa: E731
    full = logit(0.0, 0.1, 0.2, 0.3)
    p = lambda z: torch.sigmoid(torch.as_tensor(z, dtype=torch.float32))  # noqa: E731
    # top-4 = {0, 1, 4, 5}: removing sets pixels 0, 1 to the mean; keeping sets 2, 3 to it.
    torch.testing.assert_close(r.comprehensiveness, p(full) - p(logit(m, m, 0.2, 0.3)))
    torch.testing.assert_close(r.sufficiency, p(full) - p(logit(0.0, 0.1, m, m)))


def test_keep_everything_is_fully_sufficient() -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 32, 32)
    r = faithfulness(model, x, torch.rand(2, 1, 32, 32), ks=(100,))
    assert r.num_pixels == (1024,)
    torch.testing.assert_close(r.sufficiency, torch.tensor(0.0), atol=1e-6, rtol=0)


# -- pixel counts and ties --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("hw", "ks", "expected"),
    [
        (4, DEFAULT_KS, (0, 1, 2, 3, 8)),  # 16 px: 0.16, 0.8, 1.6, 3.2, 8
        (10, (0.5, 2.5, 1.5, 100), (1, 3, 2, 100)),  # halves round up (banker's would give 0, 2, 2)
        (7, (10, 50), (5, 25)),  # 49 px: 4.9, 24.5
    ],
)
def test_exact_pixel_counts(hw: int, ks: tuple[float, ...], expected: tuple[int, ...]) -> None:
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(hw * hw, 3)))
    x = torch.ones(2, 1, hw, hw)
    r = faithfulness(model, x, torch.rand(2, 1, hw, hw), ks=ks)
    assert r.num_pixels == expected
    assert model.calls == 1
    zeros = (model.inputs[0] == 0).flatten(1).sum(1).view(-1, 2)  # [variants, B]
    n = torch.tensor(expected)
    want = torch.cat([torch.zeros(1, dtype=torch.long), n, hw * hw - n])  # original, comp, suff
    assert zeros.tolist() == [[int(v)] * 2 for v in want]


def test_ties_broken_by_raster_order() -> None:
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))
    s = torch.zeros(1, 1, 4, 4)
    s[0, 0, 3, 3] = 1.0  # one clear winner, then a 15-way tie
    faithfulness(model, torch.ones(1, 1, 4, 4), s, ks=(25,))
    comp_input = model.inputs[0][1, 0].flatten()
    removed = (comp_input == 0).nonzero().flatten().tolist()
    assert removed == [0, 1, 2, 15]



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_images_do_not_round_the_saliency_before_ranking(dtype: torch.dtype) -> None:
    """A float32 map of close values (1 + k·1e-4) ranks as the well-separated map of the same
    order; cast to bfloat16 first they all round to 1.0 and the ranking fell to raster order."""
    torch.manual_seed(0)
    order = torch.randperm(64).float().view(1, 1, 8, 8)
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).to(dtype))
    x = torch.randn(1, 1, 8, 8).to(dtype)
    faithfulness(model, x, 1.0 + order * 1e-4, ks=(25,))
    close = [t.clone() for t in model.inputs]
    model.inputs.clear()
    faithfulness(model, x, order, ks=(25,))  # integers < 256: exact in both 16-bit types
    assert all(torch.equal(a, b) for a, b in zip(close, model.inputs))
    removed = (close[0][1, 0].flatten() == 0).nonzero().flatten()
    assert sorted(removed.tolist()) == sorted(order.flatten().argsort(descending=True)[:16].tolist())

# -- equivalence with the naive loop ----------------------------------------------------------
@pytest.mark.parametrize("baseline", ["zero", "mean", "blur"])
def test_matches_naive_loop(baseline: str) -> None:
    model = make_model("test_resnet")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=g)
    sal = torch.round(torch.rand(3, 1, 8, 8, generator=g) * 4) / 4  # low-res, with ties
    r = faithfulness(model, x, sal, baseline=baseline, blur_sigma=2.0)
    suff, comp = naive(model, x, sal, DEFAULT_KS, baseline, blur_sigma=2.0)
    torch.testing.assert_close(r.sufficiency_per_image, suff, atol=2e-5, rtol=0)
    torch.testing.assert_close(r.comprehensiveness_per_image, comp, atol=2e-5, rtol=0)
    torch.testing.assert_close(r.sufficiency, suff.mean(1).mean(), atol=2e-5, rtol=0)


def test_with_grad_cam_saliency() -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 32, 32)
    sal = grad_cam(model, x, None)
    r = faithfulness(model, x, sal, ks=(10, 50))
    suff, comp = naive(model, x, sal, (10, 50), "zero")
    torch.testing.assert_close(r.comprehensiveness_per_image, comp, atol=2e-5, rtol=0)
    torch.testing.assert_close(r.sufficiency_per_image, suff, atol=2e-5, rtol=0)


# -- batching, mode, grad ---------------------------------------------------------------------
@pytest.mark.parametrize(("batch_size", "calls"), [(256, 1), (10, 4), (33, 1), (32, 2), (1, 33)])
def test_forward_calls_are_chunked(batch_size: int, calls: int) -> None:
    model = Recorder(nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)))
    g = torch.Generator().manual_seed(1)
    x, s = torch.randn(3, 3, 6, 6, generator=g), torch.rand(3, 1, 6, 6, generator=g)
    r = faithfulness(model, x, s, batch_size=batch_size)  # (2 * 5 + 1) * 3 = 33 images
    assert model.calls == calls
    assert sum(len(i) for i in model.inputs) == 33
    ref = faithfulness(model.inner, x, s)
    torch.testing.assert_close(r.sufficiency_per_image, ref.sufficiency_per_image)
    torch.testing.assert_close(r.comprehensiveness_per_image, ref.comprehensiveness_per_image)


@pytest.mark.parametrize("training", [True, False])
def test_mode_unchanged_and_no_graph(training: bool) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).train(training)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    s = torch.rand(2, 1, 6, 6, requires_grad=True)
    r = faithfulness(model, x, s)
    assert model.training is training
    assert not r.sufficiency.requires_grad and not r.sufficiency_per_image.requires_grad
    assert torch.is_grad_enabled()


def test_target_overrides_prediction() -> None:
    model = _linear(_WEIGHTS)
    x = torch.ones(1, 1, 4, 4)
    r = faithfulness(model, x, _ranked_saliency(), ks=(25,), target=torch.tensor([1]))
    p1 = 1 - torch.sigmoid(torch.tensor(10.0))
    assert r.target.tolist() == [1]
    torch.testing.assert_close(r.prob, p1.view(1))
    torch.testing.assert_close(r.comprehensiveness, p1 - (1 - torch.sigmoid(torch.tensor(3.0))))


def test_result_shapes_and_dict() -> None:
    model = make_model("test_resnet")
    r = faithfulness(model, torch.randn(4, 3, 32, 32), torch.rand(4, 1, 4, 4), ks=(5, 20))
    assert isinstance(r, FaithfulnessResult)
    assert r.sufficiency.shape == () and r.comprehensiveness.shape == ()
    assert r.sufficiency_per_image.shape == (4, 2) and r.comprehensiveness_per_image.shape == (4, 2)
    assert r.target.shape == (4,) and r.prob.shape == (4,)
    assert list(r.per_k) == [5, 20] and r.ks == (5, 20)
    torch.testing.assert_close(r.per_k[20]["sufficiency"], r.sufficiency_per_image[:, 1].mean())
    assert set(r.as_dict()) == {"sufficiency", "comprehensiveness", "sufficiency@5", "comprehensiveness@5",
                                "sufficiency@20", "comprehensiveness@20"}
    assert all(math.isfinite(v) for v in r.as_dict().values())


# -- errors -----------------------------------------------------------------------------------
def _args() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)), torch.randn(2, 3, 4, 4), torch.rand(2, 1, 4, 4)


def test_saliency_batch_mismatch() -> None:
    model, x, _ = _args()
    with pytest.raises(egl.InputError, match=r"egl.metrics.faithfulness: 'saliency' expected the same batch size as 'x' \(2\), got batch size 3"):
        faithfulness(model, x, torch.rand(3, 1, 4, 4))


def test_saliency_shape() -> None:
    model, x, _ = _args()
    with pytest.raises(egl.InputError, match=r"'saliency' expected a 4-D tensor of shape \[B, 1, h, w\]"):
        faithfulness(model, x, torch.rand(2, 4, 4))
    with pytest.raises(egl.InputError, match=r"'saliency' expected shape \[B, 1, h, w\] with dimension 1 equal to 1"):
        faithfulness(model, x, torch.rand(2, 3, 4, 4))


@pytest.mark.parametrize("ks", [(0,), (5, 101), (-1,), (), "10", (10, 10), (True,)])
def test_bad_ks(ks: object) -> None:
    model, x, s = _args()
    with pytest.raises(egl.InputError, match=r"'ks' expected (a non-empty sequence of percentages in \(0, 100\]|distinct)"):
        faithfulness(model, x, s, ks=ks)  # type: ignore[arg-type]


def test_bad_baseline() -> None:
    model, x, s = _args()
    want = r"'baseline' expected one of \['zero', 'black', 'blur', 'mean', 'linear', 'noisy_linear'\], got 'grey'"
    with pytest.raises(egl.InputError, match=want):
        faithfulness(model, x, s, baseline="grey")


def test_bad_batch_size_and_sigma() -> None:
    model, x, s = _args()
    with pytest.raises(egl.InputError, match=r"'batch_size' expected an int >= 1, got int 0"):
        faithfulness(model, x, s, batch_size=0)
    with pytest.raises(egl.InputError, match=r"'blur_sigma' expected a finite number > 0"):
        faithfulness(model, x, s, baseline="blur", blur_sigma=0.0)
    # a kernel 2⌈3σ⌉+1 wide: σ = 1e5 asked kornia for 1.2 GB per 3x4x4 image, 1e9 for 24 GB
    with pytest.raises(egl.InputError, match=r"'blur_sigma' expected at most the image's larger side \(4 px\), "
                       r"got 100000.0.*baseline='mean'"):
        faithfulness(model, x, s, baseline="blur", blur_sigma=1e5)
    assert faithfulness(model, x, s, baseline="blur", blur_sigma=4.0).sufficiency.isfinite()


def test_non_finite_saliency() -> None:
    model, x, s = _args()
    s[0, 0, 1, 1] = math.nan
    with pytest.raises(egl.InputError, match=r"'saliency' expected finite values"):
        faithfulness(model, x, s)


def test_model_must_return_logits() -> None:
    _, x, s = _args()
    with pytest.raises(egl.InputError, match=r"'model' expected a model returning logits of shape"):
        faithfulness(nn.Identity(), x, s)


def test_bad_target() -> None:
    model, x, s = _args()
    with pytest.raises(egl.InputError, match=r"'target' expected class indices in \[0, 1\], got values in \[0, 5\]"):
        faithfulness(model, x, s, target=torch.tensor([0, 5]))


def test_ks_given_as_fractions_warn_and_bad_ks_are_shown() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, s = torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8)
    with pytest.warns(UserWarning, match=r"every k in ks=\(0.1, 0.5\) is at most 1%: ks are percentages"):
        faithfulness(model, x, s, ks=(0.1, 0.5))
    with pytest.raises(egl.InputError, match=r"'ks' expected a non-empty sequence of percentages in \(0, 100\], "
                                             r"got \(0, 10\)"):
        faithfulness(model, x, s, ks=(0, 10))


def test_perturbation_metrics_refuse_a_model_whose_training_mode_moves_the_scores() -> None:
    from egl.metrics import deletion, insertion, road

    x, sal = torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16)
    net = make_model("test_resnet").train()  # BatchNorm in training mode
    calls = [lambda m: faithfulness(m, x, sal, ks=(10,)), lambda m: deletion(m, x, sal, steps=2),
             lambda m: insertion(m, x, sal, steps=2), lambda m: road(m, x, sal, percentiles=(50,))]
    for name, call in zip(("faithfulness", "deletion", "insertion", "road"), calls):
        with pytest.raises(egl.InputError, match=rf"egl.metrics.{name}: 'model' expected a model in eval mode.*"
                           r"\(BatchNorm2d\) in training mode. Call model.eval\(\) first"):
            call(net)
        call(net.eval())
        net.train()
    dropout = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 16 * 16, 2))
    with pytest.raises(egl.InputError, match=r"'1' \(Dropout\) in training mode"):
        faithfulness(dropout, x, sal, ks=(10,))
    faithfulness(nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(3 * 16 * 16, 2)), x, sal, ks=(10,))  # p=0
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))  # training mode changes nothing: allowed
    faithfulness(linear.train(), x, sal, ks=(10,))
    faithfulness(lambda t: linear(t), x, sal, ks=(10,))  # a plain callable: left alone


def test_zero_baseline_is_the_stems_mean_colour_for_a_normalising_model() -> None:
    """Removing every pixel of egl's [0, 1] image leaves the mean colour the stem subtracts: zero in
    the model's normalised space (comprehensiveness@100 = p(x) - p(mean colour))."""
    from egl.normalization import IMAGENET_MEAN, normalize_inputs

    model = normalize_inputs(make_model("test_resnet"), "imagenet")
    x, s = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    out = faithfulness(model, x, s, ks=(100,), baseline="zero")
    with torch.no_grad():
        grey = F.softmax(model(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).expand_as(x)), 1)
    torch.testing.assert_close(out.comprehensiveness_per_image[:, 0], out.prob - grey[torch.arange(2), out.target])
