"""Adebayo et al.'s model parameter randomisation test: the steps, the similarities, the checks."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import egl
from egl.metrics import parameter_randomization, randomization_layers
from egl.metrics.randomization import _global_ssim, _spearman, _ssim


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()


def _x(b: int = 3, size: int = 12) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(1))


def _image_edges(model: nn.Module):
    """An 'explainer' that never looks at the model: Adebayo et al.'s edge detector."""
    def explain(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        g = x.mean(1, keepdim=True)
        return (g - g.roll(1, -1)).abs() + (g - g.roll(1, -2)).abs()
    return lambda m: explain


def test_spearman_is_scipys_with_ties_and_constant_rows_by_the_documented_rule() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (4, 30), generator=g).double()  # many ties
    b = torch.randint(0, 5, (4, 30), generator=g).double()
    rho = _spearman(a, b)
    for i in range(4):
        assert rho[i].item() == pytest.approx(spearmanr(a[i], b[i]).statistic, abs=1e-6)
    c = torch.zeros(2, 30, dtype=torch.float64)
    assert _spearman(c, c).tolist() == [1.0, 1.0]  # both constant: identical
    assert _spearman(a[:2], c).tolist() == [0.0, 0.0]  # one constant: unrelated


def test_ssim_is_one_for_equal_maps_and_the_global_form_for_tiny_maps() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    assert torch.allclose(_ssim(a, a), torch.ones(2), atol=1e-6)
    assert bool((_ssim(a, torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)) < 0.5).all())
    tiny = torch.rand(2, 1, 2, 2, generator=g, dtype=torch.float64)
    other = torch.rand(2, 1, 2, 2, generator=g, dtype=torch.float64)
    assert torch.equal(_ssim(tiny, other), _global_ssim(tiny, other))
    assert torch.allclose(_global_ssim(tiny, tiny), torch.ones(2), atol=1e-6)


def test_a_map_that_ignores_the_model_fails_the_check() -> None:
    r = parameter_randomization(_net(), _x(), _image_edges(None))
    assert r.layers == ("6", "3.0", "1", "0")  # the inner nn.Sequential is opened
    assert torch.allclose(r.spearman, torch.ones(4, 3)) and torch.allclose(r.ssim, torch.ones(4, 3), atol=1e-5)
    assert not bool(r.constant.any())


def test_grad_cam_of_a_randomised_model_changes() -> None:
    r = parameter_randomization(_net(), _x(4), "grad_cam", explainer_kwargs={"layer": "3"})
    assert r.spearman.shape == r.ssim.shape == r.spearman_abs.shape == (4, 4)
    assert float(r.spearman.mean()) < 0.9
    assert set(r.means()) == set(r.layers)
    assert set(r.means()["6"]) == {"spearman", "spearman_abs", "ssim", "constant"}


def test_cascading_keeps_the_top_random_and_independent_restores_it() -> None:
    net = _net()
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    for order in ("cascading", "independent"):
        seen: list[dict[str, torch.Tensor]] = []

        def factory(m: nn.Module):
            seen.append({k: v.clone() for k, v in m.state_dict().items()})
            return lambda x, t: x[:, :1].abs()

        r = parameter_randomization(net, _x(), factory, order=order, layers=["6", "0"])
        assert r.order == order and len(seen) == 3
        assert torch.equal(seen[0]["6.weight"], trained["6.weight"])  # the trained model first
        assert not torch.equal(seen[1]["6.weight"], trained["6.weight"])  # step 0: the head
        assert torch.equal(seen[1]["0.weight"], trained["0.weight"])
        assert not torch.equal(seen[2]["0.weight"], trained["0.weight"])  # step 1: the stem
        head_random = not torch.equal(seen[2]["6.weight"], trained["6.weight"])
        assert head_random == (order == "cascading")
    for k, v in net.state_dict().items():  # the user's model is untouched
        assert torch.equal(v, trained[k])


def test_the_model_mode_and_the_global_generator_are_left_alone() -> None:
    net = _net().train()
    state = torch.get_rng_state()
    parameter_randomization(net, _x(), _image_edges(None))
    assert net.training and torch.equal(torch.get_rng_state(), state)


def test_seeds_repeat_and_differ() -> None:
    kw = {"explainer_kwargs": {"layer": "3"}}
    a = parameter_randomization(_net(), _x(), "grad_cam", **kw)
    b = parameter_randomization(_net(), _x(), "grad_cam", **kw)
    c = parameter_randomization(_net(), _x(), "grad_cam", seed=5, **kw)
    assert torch.equal(a.spearman, b.spearman) and not torch.equal(a.spearman, c.spearman)


def test_batchnorm_statistics_are_reset_and_the_fallback_draws_a_truncated_normal() -> None:
    class Scale(nn.Module):  # no reset_parameters
        def __init__(self) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.full((3, 1, 1), 5.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gamma

    net = nn.Sequential(Scale(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2)).eval()
    with torch.no_grad():
        net[2].running_mean.fill_(3.0)
    states = []

    def factory(m: nn.Module):
        states.append({k: v.clone() for k, v in m.state_dict().items()})
        return lambda x, t: x[:, :1].abs()

    parameter_randomization(net, _x(), factory, layers="leaves")
    last = states[-1]
    assert torch.equal(last["2.running_mean"], torch.zeros(4)) and bool((last["0.gamma"].abs() <= 0.04).all())


def test_init_callable_gets_each_layer_in_order() -> None:
    calls = []

    def init(name: str, module: nn.Module) -> None:
        calls.append(name)
        with torch.no_grad():
            for p in module.parameters():
                p.zero_()

    parameter_randomization(_net(), _x(), _image_edges(None), init=init)
    assert calls == ["6", "3.0", "1", "0"]


def test_constant_maps_are_marked() -> None:
    x = _x()

    def factory(m: nn.Module):
        dead = not torch.equal(m[6].weight, _net()[6].weight)
        return lambda xx, t: torch.zeros_like(xx[:, :1]) if dead else xx[:, :1].abs()

    r = parameter_randomization(_net(), x, factory, keep_maps=True)
    assert bool(r.constant.all()) and torch.equal(r.spearman, torch.zeros(4, 3))
    assert not bool(r.trained_constant.any()) and r.maps is not None and r.maps.shape == (5, 3, 1, 12, 12)


def test_target_is_the_prediction_unless_given() -> None:
    net, x = _net(), _x()
    got = []

    def factory(m: nn.Module):
        def explain(xx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            got.append(t.clone())
            return xx[:, :1].abs()
        return explain

    r = parameter_randomization(net, x, factory)
    with torch.no_grad():
        assert torch.equal(r.target, net(x).argmax(1))
    assert all(torch.equal(t, r.target) for t in got)
    got.clear()
    parameter_randomization(net, x, factory, target=torch.tensor([3, 2, 1]))
    assert all(t.tolist() == [3, 2, 1] for t in got)
    with pytest.raises(egl.InputError, match="'target' expected class indices in \\[0, 3\\]"):
        parameter_randomization(net, x, factory, target=torch.tensor([0, 1, 9]))


def test_blocks_of_timm_models() -> None:
    timm = pytest.importorskip("timm")
    resnet = timm.create_model("resnet18", num_classes=3)
    assert randomization_layers(resnet) == ("fc", "layer4.1", "layer4.0", "layer3.1", "layer3.0", "layer2.1",
                                            "layer2.0", "layer1.1", "layer1.0", "bn1", "conv1")
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=2)
    assert randomization_layers(vit) == ("head", "norm", "blocks.1", "blocks.0", "patch_embed", "<own>")
    assert randomization_layers(resnet, "leaves")[:3] == ("fc", "layer4.1.bn2", "layer4.1.conv2")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": ["6", "nope"]}, "'layers' expected names of the model's submodules \\(or '<own>'\\), got 'nope'"),
        ({"layers": ["6", "6"]}, "'layers' expected distinct module names"),
        ({"layers": ["2"]}, "'layers' expected modules that hold parameters, got '2'"),
        ({"layers": "all"}, "'layers' expected 'blocks', 'leaves' or a non-empty list"),
        ({"layers": []}, "'layers' expected 'blocks', 'leaves' or a non-empty list"),
        ({"order": "top_down"}, "'order' expected one of \\['cascading', 'independent'\\]"),
        ({"init": "normal"}, "'init' expected 'reset' or a callable"),
        ({"seed": -1}, "'seed' expected an int in \\[0, 2\\*\\*63 - 4\\]"),
        ({"seed": 2**63 - 2}, "'seed' expected an int in \\[0, 2\\*\\*63 - 4\\]"),
        ({"explainer_kwargs": [1]}, "'explainer_kwargs' expected None or a mapping"),
        ({"keep_maps": "yes"}, "'keep_maps' expected True or False"),
        ({"explainer": 3}, "'explainer' expected a registered explainer name, or a callable model -> explainer"),
        ({"explainer": nn.ReLU()}, "'explainer' expected a registered explainer name"),
        ({"explainer": lambda m: 3}, "'explainer' expected a factory returning a callable"),
        ({"explainer": lambda m: (lambda x, t: x[:, :1, :4])},
         "'explainer' expected maps of shape \\[3, 1, 12, 12\\] at every step"),
        ({"explainer": lambda m: (lambda x, t: x[:, :1] / 0)}, "explainer's output"),
        ({"explainer": lambda m: (lambda x, t: x[:, :1]), "explainer_kwargs": {"layer": "3"}},
         "'explainer_kwargs' expected None when 'explainer' is a callable"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    kwargs = {"explainer": _image_edges(None), **kwargs}
    calls = {"n": 0}
    if kwargs.get("explainer") is not None and callable(kwargs["explainer"]) and "maps of shape" in match:
        good, bad = _image_edges(None), kwargs["explainer"]

        def once_good(m: nn.Module):  # the trained map is fine, a step's is not
            calls["n"] += 1
            return good(m) if calls["n"] == 1 else bad(m)

        kwargs["explainer"] = once_good
    with pytest.raises(egl.InputError, match=match):
        parameter_randomization(_net(), _x(), **kwargs)


def test_unknown_explainer_name_says_did_you_mean() -> None:
    with pytest.raises(KeyError, match="did you mean|Did you mean"):
        parameter_randomization(_net(), _x(), "grad_kam")


def test_bad_x_and_model_are_named() -> None:
    with pytest.raises(egl.InputError, match="'x' expected"):
        parameter_randomization(_net(), torch.randn(3, 12, 12))
    with pytest.raises(egl.InputError, match="'x' expected at least one image"):
        parameter_randomization(_net(), torch.randn(0, 3, 12, 12))
    with pytest.raises(egl.InputError, match="'model' expected a torch.nn.Module"):
        parameter_randomization(lambda x: x, _x())
    with pytest.raises(egl.InputError, match="'model' expected a model with parameters"):
        randomization_layers(nn.Sequential(nn.ReLU()))


def test_map_similarity_is_the_tests_similarities_and_checks_its_inputs() -> None:
    from egl.metrics import map_similarity

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 1, 9, 9, generator=g), torch.rand(3, 1, 9, 9, generator=g)
    sim = map_similarity(a, b)
    for i in range(3):
        assert sim["spearman"][i].item() == pytest.approx(spearmanr(a[i].flatten(), b[i].flatten()).statistic,
                                                          abs=1e-6)
    assert torch.allclose(map_similarity(a, 3 * a)["ssim"], torch.ones(3), atol=1e-6)
    assert torch.allclose(map_similarity(a, -a)["spearman_abs"], torch.ones(3))
    assert torch.allclose(map_similarity(a, -a)["spearman"], -torch.ones(3))
    with pytest.raises(egl.InputError, match="'b' expected maps of a's shape \\[3, 1, 9, 9\\]"):
        map_similarity(a, b[:, :, :8])
    with pytest.raises(egl.InputError, match="'a' expected"):
        map_similarity(a[:, 0], b)
    with pytest.raises(egl.InputError, match="'b'"):
        map_similarity(a, b / 0)


def test_the_full_cascade_leaves_no_trained_parameter() -> None:
    """A ViT's cls_token and pos_embed belong to the model itself: the last step, '<own>'."""
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=2).eval()
    trained = {k: v.clone() for k, v in vit.state_dict().items()}
    last: dict[str, torch.Tensor] = {}

    def factory(m: nn.Module):
        last.clear()
        last.update({k: v.clone() for k, v in m.state_dict().items()})
        return lambda x, t: x[:, :1].abs()

    r = parameter_randomization(vit, torch.randn(2, 3, 32, 32), factory)
    assert r.layers[-1] == "<own>"
    same = [k for k, v in trained.items() if v.is_floating_point() and torch.equal(v, last[k])
            and not (k.endswith("weight") and bool((v == 1).all())) and not (k.endswith("bias") and not v.any())]
    assert same == []  # (a norm's reset is weight 1, bias 0: the values it was created with)
    assert not torch.equal(trained["pos_embed"], last["pos_embed"])
    assert not torch.equal(trained["cls_token"], last["cls_token"])
    own_only = parameter_randomization(vit, torch.randn(2, 3, 32, 32), factory, layers=["<own>"])
    assert own_only.layers == ("<own>",) and torch.equal(last["head.weight"], trained["head.weight"])


def test_an_explainer_of_the_trained_model_is_refused() -> None:
    from egl.explainers import GradCAM

    net = _net()
    cam = GradCAM(net, "3")
    with pytest.raises(egl.InputError, match="'explainer' expected a registered explainer name, or a callable "
                                             "model -> explainer .*Pass a factory, e.g. lambda m: GradCAM"):
        parameter_randomization(net, _x(), cam)
    with pytest.raises(egl.InputError, match="'explainer' expected a factory that builds the explainer on the model "
                                             "it is given, got an explainer of another model"):
        parameter_randomization(net, _x(), lambda m: cam)
    with pytest.raises(egl.InputError, match="'explainer' expected a callable model -> explainer .*TypeError"):
        parameter_randomization(net, _x(), lambda x, t: x[:, :1])  # sensitivity's form, not a factory


def test_dtype_and_device_mismatches_are_named() -> None:
    with pytest.raises(egl.InputError, match="'x' expected .*float32"):
        parameter_randomization(_net(), _x().double())
    with pytest.raises(egl.InputError, match="'explainer_kwargs' expected the arguments of explainer 'grad_cam'"):
        parameter_randomization(_net(), _x(), "grad_cam", explainer_kwargs={"layers": "3"})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(dtype: torch.dtype) -> None:
    net = _net().to(dtype=dtype)
    r = parameter_randomization(net, _x().to(dtype=dtype), "grad_cam", explainer_kwargs={"layer": "3"})
    assert r.spearman.dtype == torch.float32 and bool(r.spearman.isfinite().all())


def test_constant_maps_have_ssim_one() -> None:
    c = torch.zeros(2, 1, 12, 12, dtype=torch.float64)
    assert torch.equal(_ssim(c, c), torch.ones(2))


def test_hog_similarity_is_scikit_images_features_correlated_and_optional() -> None:
    import numpy as np
    from skimage.feature import hog

    from egl.metrics import map_similarity
    from egl.metrics.randomization import HOG

    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 1, 32, 40, generator=g), torch.rand(3, 1, 32, 40, generator=g)
    b[1] = 2 * a[1] + 1  # the same map scaled: HOG of min-max scaled maps is the same
    b[2] = 0.5  # constant against varying: 0, as Spearman
    sim = map_similarity(a, b, hog=True)

    def feats(m: torch.Tensor) -> np.ndarray:
        m = m.double()
        return hog(((m - m.min()) / (m.max() - m.min())).numpy(), **HOG)

    assert float(sim["hog"][0]) == pytest.approx(np.corrcoef(feats(a[0, 0]), feats(b[0, 0]))[0, 1], rel=1e-5)
    assert sim["hog"][1:].tolist() == [1.0, 0.0]
    assert float(map_similarity(b[2:], b[2:], hog=True)["hog"][0]) == 1.0  # two constant maps: identical
    assert "hog" not in map_similarity(a, b)
    with pytest.raises(egl.InputError, match="'a' expected maps of at least 24 x 24 pixels for hog=True"):
        map_similarity(a[..., :20, :], b[..., :20, :], hog=True)

    r = parameter_randomization(_net(), _x(2, 32), "grad_cam", explainer_kwargs={"layer": "3"}, hog=True)
    assert r.hog is not None and r.hog.shape == r.spearman.shape and "hog" in r.means()[r.layers[0]]
    assert bool((r.hog <= 1).all()) and bool((r.hog >= -1).all())
    plain = parameter_randomization(_net(), _x(2, 32), "grad_cam", explainer_kwargs={"layer": "3"})
    assert plain.hog is None and "hog" not in plain.means()[plain.layers[0]]
    torch.testing.assert_close(plain.spearman, r.spearman)
    with pytest.raises(egl.InputError, match="'hog' expected maps of at least 24 x 24 pixels"):
        parameter_randomization(_net(), _x(2, 12), "grad_cam", explainer_kwargs={"layer": "3"}, hog=True)
