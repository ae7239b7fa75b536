"""The saliency metrics' explainer: any registered name, ``layer`` for the Grad-CAM family."""

from __future__ import annotations

import pytest
from _helpers import make_model

import egl
from egl.experiments.evaluate import saliency_explainer
from egl.explainers import GradCAMPlusPlus, InputGradient, LayerCAM


def test_a_grad_cam_explainer_takes_the_layer() -> None:
    model = make_model("test_resnet")
    cam = saliency_explainer(model, "layer_cam", "layer3")
    assert type(cam) is LayerCAM and cam.target_layer == "layer3"
    assert type(saliency_explainer(model, "grad_cam_plus_plus")) is GradCAMPlusPlus


def test_another_explainer_refuses_a_layer_and_an_unknown_name_is_named() -> None:
    model = make_model("test_resnet")
    assert type(saliency_explainer(model, "input_gradient")) is InputGradient
    with pytest.raises(egl.InputError, match="'layer' expected 'auto' with explainer='input_gradient'"):
        saliency_explainer(model, "input_gradient", "layer3")
    smoothed = saliency_explainer(model, "smoothed", "layer3", {"samples": 2})  # a wrapper passes it on
    assert smoothed.base.layer == "layer3"
    with pytest.raises(egl.ComponentNotFoundError,
                       match="^egl.experiments.evaluate: 'explainer' expected a registered explainer name, got 'layercam'"
                             r"\. Did you mean 'layer_cam'"):
        saliency_explainer(model, "layercam")


def test_curve_steps_adds_rise_deletion_and_insertion_of_the_explained_images() -> None:
    import torch

    from egl.experiments.evaluate import evaluate
    from egl.metrics import deletion, insertion

    model = make_model("test_resnet", output_stride=8)
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 5
    data = [{"image": x[i], "label": y[i]} for i in range(6)]
    plain = evaluate(model, data, batch_size=4, explain_samples=5)
    assert "deletion" not in plain and "insertion" not in plain  # off by default (steps + 1 passes per curve)
    out = evaluate(model, data, batch_size=4, explain_samples=5, curve_steps=8)
    assert {k: out[k] for k in plain} == plain  # the other metrics unchanged
    sal = saliency_explainer(model, "grad_cam")(x[:5])
    assert out["deletion"] == pytest.approx(float(deletion(model, x[:5], sal, steps=8).auc), rel=1e-5)
    assert out["insertion"] == pytest.approx(float(insertion(model, x[:5], sal, steps=8).auc), rel=1e-5)
    tiny = [{"image": torch.randn(3, 4, 4), "label": torch.tensor(0)}]  # more steps than pixels: capped at 16
    assert 0 <= evaluate(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2)), tiny,
                         explainer="input_gradient", curve_steps=100)["deletion"] <= 1


def test_sensitivity_and_randomization_are_the_metrics_on_the_explained_images() -> None:
    import torch

    from egl.experiments.evaluate import eval_settings, evaluate
    from egl.experiments.config import DEFAULTS
    from egl.metrics import parameter_randomization, sensitivity

    model = make_model("test_resnet", output_stride=8).eval()
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 5
    data = [{"image": x[i], "label": y[i]} for i in range(6)]
    plain = evaluate(model, data, batch_size=8, explain_samples=5)
    assert not {"max_sens", "avg_sens", "rand_top", "rand_all", "rand_dead"} & set(plain)  # off by default
    out = evaluate(model, data, batch_size=8, explain_samples=5, sensitivity_samples=3, sensitivity_radius=0.05,
                   randomization=True)
    assert {k: out[k] for k in plain} == plain
    cam = saliency_explainer(model, "grad_cam")
    s = sensitivity(model, x[:5], cam, samples=3, radius=0.05)
    assert out["max_sens"] == pytest.approx(float(s.max[s.valid].mean()), rel=1e-5)
    assert out["avg_sens"] == pytest.approx(float(s.mean[s.valid].mean()), rel=1e-5)
    r = parameter_randomization(model, x[:5], "grad_cam")
    alive = ~r.trained_constant
    assert out["rand_top"] == pytest.approx(float(r.spearman[0][alive].mean()), rel=1e-5)
    assert out["rand_all"] == pytest.approx(float(r.spearman[-1][alive].mean()), rel=1e-5)
    assert out["rand_dead"] == pytest.approx(float(r.constant[-1][alive].float().mean()), abs=1e-6)
    two_batches = evaluate(model, data, batch_size=3, explain_samples=5, sensitivity_samples=3,
                           sensitivity_radius=0.05, randomization=True)  # 3 + 2 images: per image, then averaged
    assert two_batches["max_sens"] == pytest.approx(out["max_sens"], rel=1e-4)
    assert model.training is False
    settings = eval_settings({**DEFAULTS["eval"], "sensitivity_samples": 3, "randomization": True}, "cpu")
    assert settings["sensitivity_samples"] == 3 and settings["randomization"] is True
    with pytest.raises(egl.InputError, match="'sensitivity_samples' expected an int >= 0"):
        evaluate(model, data, sensitivity_samples=-1)
    with pytest.raises(egl.InputError, match="'sensitivity_radius' expected a finite number > 0"):
        evaluate(model, data, sensitivity_radius=0.0)
    with pytest.raises(egl.InputError, match="'randomization' expected True or False"):
        evaluate(model, data, randomization="yes")


def test_explainer_kwargs_reach_the_explainer() -> None:
    from egl.explainers import SmoothedExplainer

    model = make_model("test_resnet")
    assert saliency_explainer(model, "grad_cam", kwargs={"layer": "layer3"}).target_layer == "layer3"
    smooth = saliency_explainer(model, "smoothed", kwargs={"samples": 2, "flip": True, "layer": "layer3"})
    assert type(smooth) is SmoothedExplainer and smooth.samples == 2 and smooth.base.target_layer == "layer3"
    with pytest.raises(egl.InputError, match="'samples' expected an int >= 1"):
        saliency_explainer(model, "smoothed", kwargs={"samples": 0})
    with pytest.raises(egl.InputError, match="layerz"):
        saliency_explainer(model, "grad_cam", kwargs={"layerz": "layer3"})


def test_a_layer_given_twice_and_bad_explainer_kwargs_are_named() -> None:
    from egl.experiments.models import check_explainer_builds

    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match="'layer' expected one layer"):
        saliency_explainer(model, "grad_cam", "layer3", kwargs={"layer": "layer4"})
    with pytest.raises(egl.InputError, match=r"'eval.explainer_kwargs' expected arguments the explainer 'smoothed' "
                                             r"takes, got \{'samples': 0\}, refused: .*'samples' expected an int >= 1"):
        check_explainer_builds(model, {"explainer": "smoothed", "explainer_kwargs": {"samples": 0}})


def test_the_randomization_figure_checks_its_inputs(tmp_path) -> None:
    import torch

    from egl.experiments.figures import randomization_figure

    images, maps = torch.rand(2, 3, 8, 8), torch.rand(3, 2, 1, 4, 4)
    path = randomization_figure(images, maps, ["fc", "conv1"], tmp_path / "f.png", spearman=torch.rand(2, 2))
    from PIL import Image

    assert Image.open(path).size == (4 * 8 * 2, 16 + 2 * (8 * 2 + 16))
    with pytest.raises(egl.InputError, match="'layers' expected 2 step names"):
        randomization_figure(images, maps, ["fc"], tmp_path / "g.png")
    with pytest.raises(egl.InputError, match="'maps' expected \\[L \\+ 1, 2, 1, h, w\\]"):
        randomization_figure(images, torch.rand(3, 4, 1, 4, 4), ["fc", "conv1"], tmp_path / "g.png")
    with pytest.raises(egl.InputError, match="'maps' expected"):
        randomization_figure(images, torch.rand(2, 1, 4, 4), ["fc"], tmp_path / "g.png")
    with pytest.raises(egl.InputError, match="'spearman' expected \\[2, 2\\]"):
        randomization_figure(images, maps, ["fc", "conv1"], tmp_path / "g.png", spearman=torch.rand(2))
    with pytest.raises(egl.InputError, match="'images' expected"):
        randomization_figure(torch.rand(2, 1, 8, 8), maps, ["fc", "conv1"], tmp_path / "g.png")


def test_background_swap_scores_every_image_with_a_mask_with_the_same_donors_for_every_model() -> None:
    import torch

    from egl.experiments.config import DEFAULTS
    from egl.experiments.evaluate import eval_settings, evaluate
    from egl.metrics import background_swap

    model = make_model("test_resnet", output_stride=8).eval()
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 2
    mask = torch.zeros(6, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1.0
    data = [{"image": x[i], "label": y[i], "mask": mask[i]} for i in range(6)]
    plain = evaluate(model, data, batch_size=8, explain_samples=2)
    assert not {"bg_fg", "bg_same", "bg_rand", "bg_gap", "bg_follow"} & set(plain)  # off by default
    out = evaluate(model, data, batch_size=8, explain_samples=2, background_swap=True)
    assert {k: out[k] for k in plain} == plain
    order = torch.Generator().manual_seed(0)  # one pass in a seeded random order, donors from the same generator
    perm = torch.randperm(6, generator=order)
    want = background_swap(model, x[perm], y[perm], mask[perm], generator=order)
    assert {k: out[k] for k in want.means()} == pytest.approx(want.means())  # all 6 images, not the 2 explained
    assert out["bg_n"] == float(want.valid_rand.sum()) == 6.0
    # an unannotated image's placeholder mask is no mask: it is neither scored nor a donor
    flagged = [{**d, "annotated": torch.tensor(i < 4)} for i, d in enumerate(data)]
    assert evaluate(model, flagged, batch_size=8, explain_samples=2, background_swap=True)["bg_n"] == 4.0
    no_masks = evaluate(model, [{"image": x[i], "label": y[i]} for i in range(6)], background_swap=True)
    assert "bg_gap" not in no_masks
    assert eval_settings({**DEFAULTS["eval"], "background_swap": True}, "cpu")["background_swap"] is True
    with pytest.raises(egl.InputError, match="'background_swap' expected True or False"):
        evaluate(model, data, background_swap="maybe")


def test_a_background_cache_imputes_each_batch_once_for_every_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import torch

    ev = importlib.import_module("egl.experiments.evaluate")  # (egl.experiments.evaluate is also the function)
    torch.manual_seed(0)
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10) % 2
    mask = torch.zeros(10, 1, 32, 32)
    mask[..., 8:24, 4:20] = 1.0
    data = [{"image": x[i], "label": y[i], "mask": mask[i]} for i in range(10)]
    models = [make_model("test_resnet", output_stride=8).eval() for _ in range(2)]
    calls = []
    real = ev.remove_objects
    monkeypatch.setattr(ev, "remove_objects", lambda *a, **k: calls.append(1) or real(*a, **k))
    cache: dict = {}
    for model in models:
        plain = ev.evaluate(model, data, batch_size=4, explain_samples=0, background_swap=True)
        cached = ev.evaluate(model, data, batch_size=4, explain_samples=0, background_swap=True,
                             background_cache=cache)
        assert cached == pytest.approx(plain, nan_ok=True)  # the same composites, the same scores
    assert len(calls) == 3 and sorted(cache) == [0, 1, 2]  # 3 batches of 4, 4, 2: imputed once, for the first model
    fingerprint, changed, values = cache[0]
    assert changed.dtype == torch.bool and changed.shape == (4, 1, 32, 32) and values.numel() == 4 * 3 * 16 * 16
    other = [{**d, "image": d["image"] + 1} for d in data]  # other images under the same keys: imputed again
    ev.evaluate(models[0], other, batch_size=4, explain_samples=0, background_swap=True, background_cache=cache)
    assert len(calls) == 6 and cache[0][0] != fingerprint
