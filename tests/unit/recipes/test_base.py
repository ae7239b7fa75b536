"""Recipe base class: config() records the constructor's arguments for logs and checkpoints."""

from __future__ import annotations

import copy
import inspect
import json

import torch
from _helpers import make_model

from egl import recipes
from egl.maskers.learned import LearnedMasker
from egl.recipes import ERM, Recipe


def test_config_records_the_outermost_constructor_with_defaults() -> None:
    recipe = recipes.align(make_model("test_resnet"), warmup_steps=7, masker=LearnedMasker(width=4))
    cfg = recipe.config()
    assert cfg["warmup_steps"] == 7 and cfg["masker_lr"] == 1e-3 and cfg["lr"] == 5e-5
    assert cfg["model"] == "ResNet(test_resnet)" and cfg["masker"] == "LearnedMasker(learned)"
    json.dumps(cfg)  # JSON-friendly
    assert recipes.erm(make_model("test_resnet"), lr=1e-4).config() == {
        "model": "ResNet(test_resnet)", "lr": 1e-4, "weight_decay": 0.0}


def test_config_survives_copies_and_keeps_signatures() -> None:
    recipe = recipes.align(make_model("test_resnet"), warmup_steps=7)
    assert copy.deepcopy(recipe).config() == recipe.config()
    assert "warmup_steps" in inspect.signature(recipes.ALIGN).parameters
    assert list(inspect.signature(ERM).parameters) == ["model", "lr", "weight_decay"]


def test_config_of_a_third_party_recipe_with_kwargs() -> None:
    class Mine(Recipe):
        name = "mine"

        def __init__(self, model: torch.nn.Module, *, tau: float = 0.5, **kwargs: float) -> None:
            super().__init__(model, **kwargs)
            self.tau = tau

    cfg = Mine(make_model("test_resnet"), lr=0.1).config()
    assert cfg == {"model": "ResNet(test_resnet)", "tau": 0.5, "lr": 0.1}
