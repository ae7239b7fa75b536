"""Max- and average-sensitivity (Yeh et al.): against a hand loop, scale, radius, and the checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import egl
from egl.metrics import sensitivity


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4)).eval()


def _x(b: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, 10, 10, generator=torch.Generator().manual_seed(1))


def _abs_map(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return x.abs().sum(1, keepdim=True)


def test_values_are_the_hand_loop_of_the_definition() -> None:
    x = _x()
    r = sensitivity(_net(), x, _abs_map, radius=0.1, samples=5, seed=3)
    gen = torch.Generator().manual_seed(3)
    base = _abs_map(x, None).double()
    changes = []
    for _ in range(5):
        xp = x + (torch.rand(x.shape[1:], generator=gen) * 2 - 1) * 0.1  # one draw for every image
        changes.append((_abs_map(xp, None).double() - base).flatten(1).norm(dim=1) / base.flatten(1).norm(dim=1))
    c = torch.stack(changes, 1)
    assert torch.allclose(r.max, c.amax(1).float()) and torch.allclose(r.mean, c.mean(1).float())
    assert bool(r.valid.all()) and r.radius == 0.1 and r.samples == 5
    assert r.means() == {"max_sensitivity": pytest.approx(float(r.max.mean())),
                         "avg_sensitivity": pytest.approx(float(r.mean.mean()))}


def test_a_map_that_does_not_move_scores_zero() -> None:
    r = sensitivity(_net(), _x(), lambda x, t: torch.ones_like(x[:, :1]), samples=3)
    assert torch.equal(r.max, torch.zeros(3)) and torch.equal(r.mean, torch.zeros(3))


def test_relative_is_free_of_the_maps_scale_and_raw_scales_with_it_and_the_radius() -> None:
    x = _x()

    def linear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x.sum(1, keepdim=True) + 10.0

    def scaled(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 5 * linear(x, t)

    rel = sensitivity(_net(), x, linear, samples=3)
    assert torch.allclose(rel.max, sensitivity(_net(), x, scaled, samples=3).max)
    raw = sensitivity(_net(), x, linear, samples=3, relative=False)
    assert torch.allclose(sensitivity(_net(), x, scaled, samples=3, relative=False).max, 5 * raw.max, rtol=1e-5)
    # the noise of a seed scales with the radius, and this map is linear in the input
    assert torch.allclose(sensitivity(_net(), x, linear, samples=3, relative=False, radius=0.04).max,
                          2 * raw.max, rtol=1e-5)


def test_a_dead_map_is_left_out_of_the_means() -> None:
    x = _x()

    def half_dead(xx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = xx.abs().sum(1, keepdim=True)
        s[0] = 0
        return s

    r = sensitivity(_net(), x, half_dead, samples=2)
    assert r.valid.tolist() == [False, True, True] and bool(r.max[0].isnan()) and bool(r.mean[0].isnan())
    assert r.means()["max_sensitivity"] == pytest.approx(float(r.max[1:].mean()))
    raw = sensitivity(_net(), x, half_dead, samples=2, relative=False)
    assert bool(raw.valid.all()) and float(raw.max[0]) == 0.0
    dead = sensitivity(_net(), x, lambda xx, t: torch.zeros_like(xx[:, :1]), samples=2)
    assert all(v != v for v in dead.means().values())


def test_the_class_explained_stays_the_prediction_on_the_image() -> None:
    net, x = _net(), _x()
    got = []

    def spy(xx: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        got.append(t.clone())
        return xx.abs().sum(1, keepdim=True)

    r = sensitivity(net, x, spy, samples=3, radius=5.0)
    with torch.no_grad():
        assert torch.equal(r.target, net(x).argmax(1))
    assert len(got) == 4 and all(torch.equal(t, r.target) for t in got)
    got.clear()
    sensitivity(net, x, spy, samples=1, target=torch.tensor([1, 1, 0]))
    assert all(t.tolist() == [1, 1, 0] for t in got)


def test_registered_explainers_by_name_repeat_with_the_seed() -> None:
    a = sensitivity(_net(), _x(), "grad_cam", samples=3, explainer_kwargs={"layer": "1"})
    b = sensitivity(_net(), _x(), "grad_cam", samples=3, explainer_kwargs={"layer": "1"})
    c = sensitivity(_net(), _x(), "grad_cam", samples=3, seed=1, explainer_kwargs={"layer": "1"})
    assert torch.equal(a.max, b.max) and not torch.equal(a.max, c.max)
    assert bool((a.max >= a.mean).all()) and bool((a.mean[a.valid] > 0).all())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"radius": 0.0}, "'radius' expected a finite number > 0"),
        ({"radius": float("nan")}, "'radius' expected a finite number > 0"),
        ({"samples": 0}, "'samples' expected an int >= 1"),
        ({"seed": 1.5}, "'seed' expected an int in \\[0, 2\\*\\*63 - 1\\]"),
        ({"seed": 2**64}, "'seed' expected an int in \\[0, 2\\*\\*63 - 1\\]"),
        ({"explainer": "grad_cam", "explainer_kwargs": {"layers": "1"}},
         "'explainer_kwargs' expected the arguments of explainer 'grad_cam'"),
        ({"relative": 1}, "'relative' expected True or False"),
        ({"explainer": 3}, "'explainer' expected a registered explainer name, or a callable"),
        ({"explainer": nn.ReLU()}, "'explainer' expected a registered explainer name"),
        ({"explainer_kwargs": {"layer": "1"}}, "'explainer_kwargs' expected None when 'explainer' is a callable"),
        ({"explainer": lambda x, t: x[:, :2]}, "explainer's output"),
        ({"explainer": lambda x, t: x[:, :1] / 0}, "explainer's output"),
        ({"target": torch.tensor([0, 1, 7])}, "'target' expected class indices in \\[0, 3\\]"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    kwargs = {"explainer": _abs_map, **kwargs}
    with pytest.raises(egl.InputError, match=match):
        sensitivity(_net(), _x(), **kwargs)


def test_maps_that_change_shape_with_the_input_are_refused() -> None:
    calls = {"n": 0}

    def shifty(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        return x[:, :1] if calls["n"] == 1 else x[:, :1, :5]

    with pytest.raises(egl.InputError, match="'explainer' expected maps of shape \\[3, 1, 10, 10\\] for every input"):
        sensitivity(_net(), _x(), shifty)


def test_bad_x_and_model_are_named() -> None:
    with pytest.raises(egl.InputError, match="'x' expected at least one image"):
        sensitivity(_net(), torch.randn(0, 3, 10, 10))
    with pytest.raises(egl.InputError, match="'x' expected"):
        sensitivity(_net(), torch.full((1, 3, 10, 10), float("inf")))
    with pytest.raises(egl.InputError, match="'model' expected a torch.nn.Module"):
        sensitivity(lambda x: x, _x())


def test_a_model_in_training_mode_is_refused_and_left_as_it_was() -> None:
    net = _net()
    net[0].train()
    with pytest.raises(egl.InputError, match="'model' expected a model in eval mode .*got '0' in training mode. "
                                             "Call model.eval\\(\\) first"):
        sensitivity(net, _x(), _abs_map)
    assert net[0].training


def test_an_images_score_does_not_depend_on_its_batch() -> None:
    x = _x(4)
    whole = sensitivity(_net(), x, "grad_cam", samples=3, explainer_kwargs={"layer": "1"})
    alone = sensitivity(_net(), x[2:3], "grad_cam", samples=3, explainer_kwargs={"layer": "1"})
    assert torch.allclose(whole.max[2:3], alone.max, atol=1e-6) and torch.allclose(whole.mean[2:3], alone.mean,
                                                                                     atol=1e-6)


def test_unknown_names_and_mismatched_dtypes_are_named_as_this_functions() -> None:
    with pytest.raises(egl.ComponentNotFoundError, match="^egl.metrics.sensitivity: 'explainer' expected a registered"):
        sensitivity(_net(), _x(), "grad_kam")
    with pytest.raises(egl.InputError, match="^egl.metrics.sensitivity: 'x' expected .*float32"):
        sensitivity(_net(), _x().double(), _abs_map)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(dtype: torch.dtype) -> None:
    net = _net().to(dtype=dtype)
    r = sensitivity(net, _x().to(dtype=dtype), "grad_cam", samples=2, explainer_kwargs={"layer": "1"})
    assert r.max.dtype == torch.float32 and bool(r.max[r.valid].isfinite().all())
