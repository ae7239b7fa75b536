"""VREx recipe: the risk variance against DomainBed's computation written out, the λ schedule,
the Adam reset at the annealing step, and the groupings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model

import egl
from egl import recipes
from egl.recipes.vrex import VREx, risk_variance


def _batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 3,
            torch.tensor([0, 1, 0, 1, 0, 1, 2, 2, 1, 0])[:n])


def _domainbed(logits: torch.Tensor, y: torch.Tensor, domain: torch.Tensor, lam: float) -> tuple[torch.Tensor, ...]:
    """DomainBed's ``VREx.update``, one minibatch per domain, written out."""
    losses = torch.zeros(len(torch.unique(domain)))
    for i, dom in enumerate(torch.unique(domain)):
        losses[i] = F.cross_entropy(logits[domain == dom], y[domain == dom])
    mean = losses.mean()
    penalty = ((losses - mean) ** 2).mean()
    return mean, penalty, mean + lam * penalty


def test_terms_match_domainbed_and_the_schedule() -> None:
    model = make_model("test_resnet")
    recipe = VREx(model, anneal_steps=3).eval()
    x, y, d = _batch()
    logits = model(x).detach()
    for step, lam in ((0, 1.0), (2, 1.0), (3, 10.0), (40, 10.0)):
        mean, penalty, total = _domainbed(logits, y, d, lam)
        terms = recipe.compute_phase("classifier", (x, y, d), step)
        assert torch.allclose(terms["ce"], mean, rtol=1e-5)
        assert torch.allclose(terms["penalty"], penalty, rtol=1e-4, atol=1e-9)
        assert float(terms["penalty_weight"]) == lam
        assert torch.allclose(terms["total"], total, rtol=1e-5)
    assert float(terms["penalty"]) > 0


def test_risk_variance_is_the_population_variance() -> None:
    risks = torch.tensor([0.5, 1.0, 2.5])
    assert torch.allclose(risk_variance(risks), risks.var(unbiased=False))
    assert float(risk_variance(torch.tensor([3.0]))) == 0.0


def test_penalty_gradient_reaches_the_model_and_equalises_risks() -> None:
    model = make_model("test_resnet")
    terms = VREx(model).compute_phase("classifier", _batch(), 0)
    terms["penalty"].backward()
    assert model.fc.weight.grad.abs().sum() > 0 and model.conv1[0].weight.grad.abs().sum() > 0


def test_one_group_has_no_penalty() -> None:
    model = make_model("test_resnet")
    x, y, _ = _batch()
    terms = VREx(model).compute_phase("classifier", (x, y, torch.zeros(8, dtype=torch.long)), 0)
    assert float(terms["penalty"]) == 0.0
    assert torch.allclose(terms["ce"], F.cross_entropy(model(x), y), rtol=1e-5)


@pytest.mark.parametrize("groups", ["class", "domain_class", "shortcut"])
def test_other_groupings_take_the_risks_of_their_groups(groups: str) -> None:
    model = make_model("test_resnet")
    x, y, d = _batch()
    s = torch.tensor([-1, 1, 2, 0, -1, -1, 0, 1])
    key = {"class": y, "domain_class": d * 3 + y, "shortcut": y * 4 + s + 1}[groups]
    mean, penalty, _ = _domainbed(model(x).detach(), y, key, 1.0)
    recipe = recipes.vrex(model, groups=groups).eval()
    terms = recipe.compute_phase("classifier", {"image": x, "label": y, "domain": d, "shortcut": s}, 0)
    assert torch.allclose(terms["ce"], mean, rtol=1e-5) and torch.allclose(terms["penalty"], penalty, rtol=1e-4)
    assert recipe.needs_domains == (groups == "domain_class")


def test_annealing_step_resets_the_optimiser_state() -> None:
    recipe = recipes.vrex(make_model("test_resnet", eval_mode=False), anneal_steps=2)
    opts = recipe.configure_optimizers()
    opt = opts["classifier"]
    logs = recipe.fit([_batch(6)], steps=3, optimizers=opts, progress=False)
    assert opts["classifier"] is opt
    assert [row["classifier/penalty_weight"] for row in logs] == [1.0, 1.0, 10.0]
    assert {float(s["step"]) for s in opt.state.values()} == {1.0}  # forgotten at step 2, then one step


def test_bad_arguments_and_batches_are_named() -> None:
    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match=r"egl.recipes.vrex: 'groups' expected one of"):
        recipes.vrex(model, groups="background")
    with pytest.raises(egl.InputError, match=r"'penalty_weight' expected"):
        recipes.vrex(model, penalty_weight=-1.0)
    with pytest.raises(egl.InputError, match=r"'anneal_steps'"):
        recipes.vrex(model, anneal_steps=1.5)
    x, y, _ = _batch()
    with pytest.raises(egl.InputError, match=r"VREx with groups='domain' needs \(x, y, domain\) batches"):
        recipes.vrex(model).compute_phase("classifier", (x, y), 0)
    with pytest.raises(egl.InputError, match=r"'batch' expected dict batches with key 'shortcut'"):
        recipes.vrex(model, groups="shortcut").compute_phase("classifier", (x, y), 0)


def test_registered_and_configurable_by_name() -> None:
    recipe = egl.create("recipe", "vrex", make_model("test_resnet"), penalty_weight=5.0, groups="class")
    assert isinstance(recipe, VREx)
    assert recipe.config()["penalty_weight"] == 5.0 and recipe.config()["groups"] == "class"
