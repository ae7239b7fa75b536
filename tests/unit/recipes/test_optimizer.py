"""Recipes' default optimisers: Adam, AdamW or SGD, with their options checked at construction."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.maskers.learned import LearnedMasker
from egl.recipes.optimizer import check_optimizer, describe_optimizer


@pytest.mark.parametrize(("spec", "cls", "options"), [
    ("adam", torch.optim.Adam, {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}),
    ("adamw", torch.optim.AdamW, {"betas": (0.9, 0.999)}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "dampening": 0.0, "nesterov": False}),
    ({"name": "sgd", "momentum": 0.5, "nesterov": True}, torch.optim.SGD, {"momentum": 0.5, "nesterov": True}),
    ({"name": "adamw", "betas": [0.8, 0.99], "eps": 1e-6, "amsgrad": True}, torch.optim.AdamW,
     {"betas": (0.8, 0.99), "eps": 1e-6, "amsgrad": True}),
])
def test_each_kind_is_built_with_the_recipes_lr_decay_and_options(spec, cls, options) -> None:
    recipe = recipes.erm(make_model("test_resnet"), lr=3e-4, weight_decay=0.02, optimizer=spec)
    opt = recipe.configure_optimizers()["classifier"]
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 3e-4 and group["weight_decay"] == 0.02
    assert {k: group[k] for k in options} == options
    assert {id(p) for p in group["params"]} == {id(p) for p in recipe.model.parameters()}


def test_every_phase_gets_the_kind_at_its_own_learning_rate() -> None:
    recipe = recipes.align(make_model("test_resnet"), masker=LearnedMasker(width=4), optimizer="adamw",
                           lr=1e-4, masker_lr=1e-2, weight_decay=0.05)
    opts = recipe.configure_optimizers()
    assert {k: type(v) for k, v in opts.items()} == {"masker": torch.optim.AdamW, "classifier": torch.optim.AdamW}
    assert opts["masker"].param_groups[0]["lr"] == 1e-2 and opts["classifier"].param_groups[0]["lr"] == 1e-4
    assert opts["masker"].param_groups[0]["weight_decay"] == 0.05


@pytest.mark.parametrize("name", ["erm", "irm", "mixup", "sgt", "sgdrop", "dre", "group_dro", "vrex", "coral", "sd",
                                  "mmd", "align"])
def test_every_recipe_takes_and_records_the_optimizer(name: str) -> None:
    recipe = egl.create("recipe", name, make_model("test_resnet"), optimizer={"name": "sgd", "momentum": 0.0})
    assert all(type(o) is torch.optim.SGD for o in recipe.configure_optimizers().values())
    assert recipe.config()["optimizer"] == {"name": "sgd", "momentum": 0.0}


def test_sgd_and_adamw_steps_are_the_textbook_updates() -> None:
    """SGD without momentum: p - lr (g + wd p); AdamW's first step: p (1 - lr wd) - lr sign(g)
    (decoupled: the decay does not pass through Adam's scaling, which makes Adam's a sign step
    of the decayed gradient instead)."""
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    lr, wd = 1e-2, 0.1
    for spec in ({"name": "sgd", "momentum": 0.0}, "adamw", "adam"):
        model = make_model("test_resnet")
        recipe = recipes.erm(model, lr=lr, weight_decay=wd, optimizer=spec).eval()  # eval: BN fixed, same loss
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        recipe.zero_grad()
        recipe.compute_phase("classifier", (x, y), 0)["total"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        recipe.training_step((x, y), 0, recipe.configure_optimizers())
        for n, p in model.named_parameters():
            g, p0 = grads[n], before[n]
            if spec == "adamw":
                expected = p0 * (1 - lr * wd) - lr * g / (g.abs() + 1e-8)
            elif spec == "adam":
                d = g + wd * p0
                expected = p0 - lr * d / (d.abs() + 1e-8)
            else:
                expected = p0 - lr * (g + wd * p0)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6, msg=f"{spec}: {n}")


def test_norm_and_bias_parameters_can_go_undecayed() -> None:
    """timm's rule: 1-D parameters (biases, BatchNorm scales) in a second group without decay."""
    model = make_model("test_resnet")
    spec = {"name": "adamw", "decay_norm_and_bias": False}
    opt = recipes.erm(model, optimizer=spec, weight_decay=0.05).configure_optimizers()["classifier"]
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0
    assert {id(p) for p in plain["params"]} == {id(p) for p in model.parameters() if p.dim() == 1}
    assert {id(p) for p in decayed["params"]} == {id(p) for p in model.parameters() if p.dim() > 1}
    assert plain["params"] and all(g["lr"] == 5e-5 for g in opt.param_groups)
    no_decay = recipes.erm(model, optimizer=spec).configure_optimizers()["classifier"]
    assert len(no_decay.param_groups) == 1  # nothing to split at weight_decay=0
    assert recipes.erm(model, optimizer=spec).config()["optimizer"] == {"name": "adamw", "decay_norm_and_bias": False}


def test_what_a_models_no_weight_decay_names_goes_undecayed_too() -> None:
    model = make_model("test_vit")
    names = set(model.no_weight_decay())
    assert {"pos_embed", "cls_token"} & names
    opt = recipes.erm(model, optimizer={"name": "adamw", "decay_norm_and_bias": False},
                      weight_decay=0.05).configure_optimizers()["classifier"]
    plain = {id(p) for p in opt.param_groups[1]["params"]}
    for n, p in model.named_parameters():
        assert (id(p) in plain) == (p.dim() <= 1 or n in names), n


def test_equal_specs_read_alike_in_the_config() -> None:
    model = make_model("test_resnet")
    assert recipes.erm(model, optimizer={"name": "sgd", "momentum": 0.9}).config()["optimizer"] == "sgd"
    assert recipes.erm(model, optimizer={"name": "adam"}).config()["optimizer"] == "adam"
    assert describe_optimizer(check_optimizer({"name": "adamw", "betas": (0.9, 0.99)}, "f")) == {
        "name": "adamw", "betas": [0.9, 0.99]}


@pytest.mark.parametrize(("spec", "match"), [
    ("adamm", r"'optimizer' expected one of \['adam', 'adamw', 'sgd'\], got 'adamm'"),
    ({"name": "sdg"}, r"'optimizer.name' expected one of \['adam', 'adamw', 'sgd'\], got 'sdg'"),
    (torch.optim.SGD, r"'optimizer' expected one of \['adam', 'adamw', 'sgd'\] or a dict.*got .*SGD"),
    ({"momentum": 0.9}, r"'optimizer' expected a dict with a 'name' key, got keys \['momentum'\].*Add 'name'"),
    ({"name": "adam", "momentum": 0.9}, r"'optimizer.momentum' expected one of the options of 'adam' "
     r"\['betas', 'eps', 'amsgrad', 'decay_norm_and_bias'\]"),
    ({"name": "sgd", "momentun": 0.9}, r"'optimizer.momentun'.*Did you mean 'optimizer.momentum'"),
    ({"name": "adam", "betas": [0.9]}, r"'optimizer.betas' expected two numbers in \[0, 1\)"),
    ({"name": "adam", "betas": [0.9, 1.0]}, r"'optimizer.betas' expected two numbers in \[0, 1\)"),
    ({"name": "adam", "eps": 0}, r"'optimizer.eps' expected a finite number > 0, got 0"),
    ({"name": "adam", "amsgrad": 1}, r"'optimizer.amsgrad' expected True or False"),
    ({"name": "sgd", "momentum": float("nan")}, r"'optimizer.momentum' expected a finite number >= 0, got nan"),
    ({"name": "sgd", "dampening": 2}, r"'optimizer.dampening' expected a number in \[0, 1\]"),
    ({"name": "sgd", "momentum": 0.0, "nesterov": True}, r"'optimizer.nesterov' expected momentum > 0 and "
     r"dampening 0.*got momentum 0.0, dampening 0.0"),
])
def test_bad_specs_are_refused_when_the_recipe_is_built(spec, match) -> None:
    with pytest.raises(egl.InputError, match=r"egl.recipes.erm: " + match):
        recipes.erm(make_model("test_resnet"), optimizer=spec)
