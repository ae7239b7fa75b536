"""Recipe base class: config() records the constructor's arguments for logs and checkpoints."""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.maskers.learned import LearnedMasker
from egl.recipes import ERM, Phase, Recipe
from egl.recipes.batch import as_batch


def test_config_records_the_outermost_constructor_with_defaults() -> None:
    recipe = recipes.align(make_model("test_resnet"), warmup_steps=7, masker=LearnedMasker(width=4))
    cfg = recipe.config()
    assert cfg["warmup_steps"] == 7 and cfg["masker_lr"] == 1e-3 and cfg["lr"] == 5e-5
    assert cfg["model"] == "ResNet(test_resnet)"
    assert cfg["masker"] == {"name": "learned", "kwargs": {"in_channels": 3, "width": 4, "memory_format": "auto",
                                                           "recompute_bn": True}}  # an instance: name and arguments
    assert egl.resolve("masker", cfg["masker"]).net[0].out_channels == 4  # (the form egl.resolve builds from)
    json.dumps(cfg)  # JSON-friendly
    assert recipes.erm(make_model("test_resnet"), lr=1e-4).config() == {
        "model": "ResNet(test_resnet)", "lr": 1e-4, "weight_decay": 0.0, "optimizer": "adam"}


def test_config_survives_copies_and_keeps_signatures() -> None:
    recipe = recipes.align(make_model("test_resnet"), warmup_steps=7)
    assert copy.deepcopy(recipe).config() == recipe.config()
    assert "warmup_steps" in inspect.signature(recipes.ALIGN).parameters
    assert list(inspect.signature(ERM).parameters) == ["model", "lr", "weight_decay", "optimizer"]


def test_config_of_a_third_party_recipe_with_kwargs() -> None:
    class Mine(Recipe):
        name = "mine"

        def __init__(self, model: torch.nn.Module, *, tau: float = 0.5, **kwargs: float) -> None:
            super().__init__(model, **kwargs)
            self.tau = tau

    cfg = Mine(make_model("test_resnet"), lr=0.1).config()
    assert cfg == {"model": "ResNet(test_resnet)", "tau": 0.5, "lr": 0.1}


@pytest.mark.parametrize("arg,value", [("lr", -1e-3), ("lr", float("nan")), ("lr", "1e-3"),
                                       ("weight_decay", -0.01), ("weight_decay", float("inf"))])
@pytest.mark.parametrize("name", ["erm", "align", "sgdrop"])
def test_lr_and_weight_decay_are_checked_when_the_recipe_is_built(name: str, arg: str, value: object) -> None:
    """torch's Adam refused most of these only once fit built the optimisers (a torch ValueError
    without the recipe's name), and took weight_decay=inf: every parameter NaN after one step."""
    model = make_model("test_resnet", eval_mode=False)
    with pytest.raises(egl.InputError, match=rf"egl.recipes.{name}: '{arg}' expected a finite number >= 0"):
        getattr(recipes, name)(model, **{arg: value})
    assert getattr(recipes, name)(model, lr=0.0, weight_decay=0.0).lr == 0.0  # a frozen run is allowed


@pytest.mark.parametrize("layout", ["tuple", "dict"])
def test_an_empty_batch_is_named(layout: str) -> None:
    x, y = torch.zeros(0, 3, 32, 32), torch.zeros(0, dtype=torch.long)
    batch = (x, y) if layout == "tuple" else {"image": x, "label": y}
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match=r"'batch image' expected at least one image, got a torch.float32 "
                       r"tensor of shape \[0, 3, 32, 32\].*Skip empty batches"):
        recipe.fit([batch], 1, progress=False)
    with pytest.raises(egl.InputError, match="at least one image"):
        as_batch(batch)


def test_masks_in_a_tuple_batch_are_told_to_travel_in_a_dict() -> None:
    x, y, mask = torch.zeros(4, 3, 32, 32), torch.zeros(4, dtype=torch.long), torch.ones(4, 32, 32)
    with pytest.raises(egl.InputError, match=r"'batch domain' expected an integer tensor of shape \[4\].*masks "
                       r"travel in dict batches only: \{'image': x, 'label': y, 'mask': m\}"):
        as_batch((x, y, mask))
    with pytest.raises(egl.InputError, match=r"Give one integer domain index per image.$"):  # a wrong domain
        as_batch((x, y, torch.zeros(4)))


class _TupleOut(torch.nn.Module):
    """A model whose forward returns (logits, features), as some detection-style wrappers do."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_model("test_resnet", eval_mode=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, logits


@pytest.mark.parametrize("name", ["erm", "irm", "mixup", "sgt", "align"])
def test_a_model_returning_a_tuple_is_named_by_every_recipe(name: str) -> None:
    batch = (torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(egl.UnsupportedModelError, match=r"the model returned a tuple of length 2; expected logits "
                                                        r"of shape \[\d+, num_classes\]"):
        getattr(recipes, name)(_TupleOut()).fit([batch], 1, progress=False)


@pytest.mark.parametrize("recipe", ["erm", "align", "irm", "coral"])
def test_a_model_without_a_head_is_refused(recipe: str) -> None:
    import timm

    headless = timm.create_model("test_resnet", num_classes=0)  # outputs pooled features, not logits
    with pytest.raises(egl.InputError, match=rf"egl.recipes.{recipe}: 'model' expected a classifier with a head.*"
                       r"get_classifier\(\) is Identity.*reset_classifier\(K\)"):
        egl.create("recipe", recipe, headless)
    headless.fc = torch.nn.Linear(headless.num_features, 5)  # a head set by hand (num_classes still 0): fine
    egl.create("recipe", recipe, headless)


def test_recipe_factories_show_the_recipes_signature_and_name_a_misspelt_argument() -> None:
    for name in egl.list_components("recipe"):
        factory = getattr(recipes, name, None)
        if factory is None:  # (a plugin's recipe)
            continue
        cls = egl.get_component("recipe", name)
        assert list(inspect.signature(factory).parameters) == list(inspect.signature(cls).parameters), name
    with pytest.raises(egl.InputError, match=r"egl.recipes.align: 'kwargs' expected the arguments of recipe 'align' "
                       r"\(model: .*unexpected keyword argument 'align_wieght'. Did you mean 'align_weight'"):
        recipes.align(make_model("test_resnet"), align_wieght=1.0)
    assert type(recipes.irm(make_model("test_resnet"), penalty_weight=10.0)).__name__ == "IRM"


class _Custom(Recipe):
    """A plugin author's recipe, with the mistakes the checks name."""

    name = "custom"

    def __init__(self, model: torch.nn.Module, terms=None, phases=None, aux: torch.nn.Module | None = None) -> None:
        super().__init__(model)
        self._terms_fn, self._phases, self._aux = terms, phases, [aux]  # (aux held outside the module tree)

    def phases(self):
        return self._phases(self) if self._phases is not None else [Phase("classifier", self.model, self._compute)]

    def _compute(self, batch, step):
        ce = torch.nn.functional.cross_entropy(self.model(batch.x), batch.y)
        return self._terms_fn(ce) if self._terms_fn is not None else {"ce": ce, "total": ce}


@pytest.mark.parametrize("terms, message", [
    (lambda ce: {"ce": ce}, r"expected a dict of loss terms with a 'total', got keys \['ce'\]"),
    (lambda ce: {"ce": 1.0, "total": ce}, r"expected 0-d tensors \(one value per term\), got 'ce': float 1.0"),
    (lambda ce: {"per_image": ce.expand(4), "total": ce}, r"got 'per_image': a torch.float32 tensor of shape \[4\]"),
    (lambda ce: {"total": ce.detach()}, r"expected a 'total' that requires grad"),
])
def test_a_phases_terms_are_checked_and_named(terms, message: str) -> None:
    recipe = _Custom(make_model("test_resnet", eval_mode=False), terms=terms)  # (a single module: taken as a tuple)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with pytest.raises(egl.InputError, match=r"egl.recipes.custom: 'phase 'classifier' terms' .*" + message):
        recipe.training_step((x, y), 0, recipe.configure_optimizers())


def test_phases_that_cannot_train_are_refused_and_a_module_outside_the_recipe_warns() -> None:
    model = make_model("test_resnet", eval_mode=False)
    compute = _Custom._compute
    cases = [(lambda r: [], r"'phases\(\)' expected a non-empty list of egl.recipes.Phase"),
             (lambda r: [Phase("a", (r.model,), compute), Phase("a", (r.model,), compute)], r"\['a'\] more than once"),
             (lambda r: [Phase("a", (torch.nn.ReLU(),), compute)], r"phase 'a' over modules with parameters")]
    for phases, message in cases:
        with pytest.raises(egl.InputError, match=message):
            _Custom(model, phases=phases).configure_optimizers()
    with pytest.raises(egl.InputError, match=r"Phase: 'modules' expected a tuple of the nn.Modules"):
        Phase("a", ("model",), compute)
    aux = torch.nn.Linear(2, 2)
    recipe = _Custom(model, aux=aux, phases=lambda r: [Phase("classifier", (r.model,), compute),
                                                        Phase("aux", (r._aux[0],), compute)])
    with pytest.warns(UserWarning, match=r"phase 'aux' updates \['Linear'\], which the recipe does not hold as a "
                      r"submodule: its weights are in no state_dict or checkpoint"):
        recipe.configure_optimizers()


def test_a_phase_runs_every_k_steps_from_its_start() -> None:
    from torch import nn

    from egl.recipes import Phase

    phase = Phase("p", nn.Linear(1, 1), lambda b, s: {}, start_step=3, every=2)
    assert [s for s in range(9) if phase.active(s)] == [3, 5, 7]
    with pytest.raises(egl.InputError, match="'every' expected an int >= 1, got 0"):
        Phase("p", nn.Linear(1, 1), lambda b, s: {}, every=0)
