"""egl.experiments.runner.train_method: what it prepares for a recipe before training."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from egl.data import item_labels
from egl.experiments.config import DEFAULTS
from egl.experiments.runner import train_defaults, train_method
from egl.experiments.sweep import expand
from egl.experiments.sources import load_source


def test_group_dro_with_the_adjustment_trains_on_the_training_sets_group_sizes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_CACHE_DIR", str(tmp_path))
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"].update(synthetic={"train_per_domain": 24, "val_per_domain": 4, "test_per_split": 4}, batch_size=8)
    cfg["model"].update(arch="test_resnet", kwargs={})
    cfg["train"].update(steps=2, progress=False)
    cfg["methods"] = {"dro": {"recipe": "group_dro", "kwargs": {"groups": "shortcut", "adjustment": 2.0}}}
    source = load_source(cfg["data"])
    train_set = source.training_sets("all")["all"]
    recipe = train_method(cfg, "dro", source, train_set, seed=0)
    labels = item_labels(train_set, "shortcut")
    ids = labels["label"] * (source.num_classes + 1) + labels["shortcut"] + 1
    want = torch.bincount(ids, minlength=recipe.max_groups).float()
    assert recipe.group_sizes.sum() == len(train_set) == 48
    torch.testing.assert_close(recipe.group_sizes, want)
    assert not torch.equal(recipe.log_q, torch.zeros_like(recipe.log_q))  # it trained


def test_train_optimizer_and_weight_decay_reach_every_method_unless_its_kwargs_set_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_CACHE_DIR", str(tmp_path))
    assert train_defaults(DEFAULTS["train"]) == {"lr": 1e-3}  # null: the recipes' own
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"].update(synthetic={"train_per_domain": 8, "val_per_domain": 2, "test_per_split": 4}, batch_size=4)
    cfg["model"].update(arch="test_resnet", kwargs={})
    cfg["train"].update(steps=1, progress=False, optimizer="adamw", weight_decay=0.02)
    cfg["methods"] = {"erm": {"recipe": "erm"},
                      "sgd": {"recipe": "erm", "kwargs": {"optimizer": "sgd", "weight_decay": 0.0}}}
    source = load_source(cfg["data"])
    train_set = source.training_sets("all")["all"]
    plain = train_method(cfg, "erm", source, train_set, seed=0)
    assert plain.config()["optimizer"] == "adamw" and plain.weight_decay == 0.02
    own = train_method(cfg, "sgd", source, train_set, seed=0)
    assert own.config()["optimizer"] == "sgd" and own.weight_decay == 0.0
    cfg["methods"] = {"erm": {"recipe": "erm", "space": {"weight_decay": ["choice", [0.1]],
                                                          "optimizer": ["choice", ["sgd"]]}}}
    cfg["sweep"] = {"n": 2, "seed": 0}
    _, info = expand(cfg, selecting=False)
    assert info["erm@0"]["hparams"] == {"optimizer": "adamw", "weight_decay": 0.02}  # draw 0: train's
    assert info["erm@1"]["hparams"] == {"optimizer": "sgd", "weight_decay": 0.1}


def test_a_domain_comparing_method_on_one_training_domain_warns() -> None:
    import warnings

    from egl import recipes
    from egl.experiments.runner import _warn_if_domains_cannot_differ

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
    model.get_classifier = lambda: model[1]  # (what CORAL reads its features from)
    comparing = [recipes.coral(model), recipes.mmd(model), recipes.vrex(model), recipes.group_dro(model)]
    for recipe in comparing:
        with pytest.warns(UserWarning, match=r"method 'm' compares the training domains, but this run trains on one "
                                             r"\(domain0\).*the run is ERM"):
            _warn_if_domains_cannot_differ(recipe, "m", ["domain0"])
    others = [recipes.vrex(model, groups="shortcut"), recipes.group_dro(model, groups="class"), recipes.irm(model),
              recipes.erm(model)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for recipe in others:
            _warn_if_domains_cannot_differ(recipe, "m", ["domain0"])
        for recipe in comparing:
            _warn_if_domains_cannot_differ(recipe, "m", ["domain0", "domain1"])
            _warn_if_domains_cannot_differ(recipe, "m", None)

    class Plugin(recipes.ERM):  # a plugin's recipe says so itself
        name = "plugin_penalty"
        compares_domains = True

    with pytest.warns(UserWarning, match=r"method 'p' compares the training domains"):
        _warn_if_domains_cannot_differ(Plugin(model), "p", ["domain0"])


def test_an_experiment_imputes_the_background_swaps_backgrounds_once_for_all_its_models(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import json

    from egl.experiments.config import apply_overrides, merge
    from egl.experiments.runner import run

    monkeypatch.setenv("EGL_CACHE_DIR", str(tmp_path / "cache"))
    ev = importlib.import_module("egl.experiments.evaluate")
    calls: list[int] = []
    real = ev.remove_objects
    monkeypatch.setattr(ev, "remove_objects", lambda x, *a, **k: calls.append(x.shape[0]) or real(x, *a, **k))
    settings = ["train.steps=1", "train.seeds=[0]", "train.progress=false", "data.synthetic.train_per_domain=16",
                "data.synthetic.val_per_domain=4", "data.synthetic.test_per_split=6", "eval.explain_samples=2",
                "model.arch=test_resnet", "eval.mask_quality=false", "eval.background_swap=true",
                "train.domains=each", "data.batch_size=8"]
    counts = []
    for n, methods in enumerate(("{erm: {recipe: erm}}", "{erm: {recipe: erm}, again: {recipe: erm}}")):
        out = tmp_path / f"run{n}"
        calls.clear()
        rows, _ = run(apply_overrides(merge(DEFAULTS, {}), [*settings, f"output={out}", f"methods={methods}"]),
                      echo=False)
        counts.append(sum(calls))
    # one model per training domain and method, each split's backgrounds imputed once (for the first model)
    assert counts[0] == counts[1] > 0
    rows = [json.loads(line) for line in (tmp_path / "run1" / "results.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "event" not in r and r["method"] == "again" and "bg_n" in r]
    assert scored and all(r["bg_n"] > 0 for r in scored)


@pytest.mark.parametrize("kwargs, message", [
    ("{align_weight: -1}", "'align_weight' expected a finite number >= 0, got -1"),
    ("{align_wieght: 1}", "got an unexpected keyword argument 'align_wieght'"),
    ("{masker: grey}", "expected a registered masker name, got 'grey'"),
    ("{masker: {name: learned, kwargs: {widht: 4}}}", "Did you mean 'width' (for 'widht')?"),
    ("{masker: {name: learned, width: 4}}", "the arguments go under 'kwargs'"),
])
def test_a_methods_bad_kwargs_stop_the_grid_before_any_folder_or_run(tmp_path: Path, kwargs: str,
                                                                      message: str) -> None:
    import egl
    from egl.experiments.config import apply_overrides, merge
    from egl.experiments.runner import run

    out = tmp_path / "never"
    cfg = apply_overrides(merge(DEFAULTS, {}), [
        "train.steps=1", "train.seeds=[0]", "model.arch=test_resnet", f"output={out}",
        f"methods={{erm: {{recipe: erm}}, align: {{recipe: align, kwargs: {kwargs}}}}}"])  # align second
    with pytest.raises(egl.EGLError, match="methods.align, recipe 'align'; nothing was trained") as info:
        run(cfg, echo=False)
    assert message in str(info.value) and not out.exists()
