"""Inter-domain Mixup recipe: pairing, the loss against the formula, one domain, domains required."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model

import egl
from egl.recipes.mixup import Mixup, domain_pairs, mixup

DOMAIN_MESSAGE = r"Mixup needs \(x, y, domain\) batches or dict key 'domain'"


def _batch(n: int = 8, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % 3
    domain = torch.tensor([0, 1, 2, 0, 2, 1, 2, 0, 1, 0])[:n]
    return x, y, domain


def _fix(recipe: Mixup, lam: list[float], cycle: list[int] | None = None) -> None:
    recipe.sample_lam = lambda n, device: torch.tensor(lam[:n], device=device)  # type: ignore[method-assign]
    if cycle is not None:
        recipe.sample_cycle = lambda n: list(cycle)  # type: ignore[method-assign]


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_three_steps_on_tiny_models(name: str) -> None:
    kwargs = {"output_stride": 16} if name == "test_resnet" else {}
    recipe = mixup(make_model(name, eval_mode=False, **kwargs))
    logs = recipe.fit([_batch(6)], steps=3, seed=0, progress=False)
    assert len(logs) == 3 and set(logs[0]) == {"step", "classifier/mix_ce", "classifier/total"}
    assert all(torch.isfinite(torch.tensor(v)) for row in logs for v in row.values())


def test_pairs_follow_the_cycle_and_truncate() -> None:
    _, _, d = _batch(8)  # domain 0: [0, 3, 7], domain 1: [1, 5], domain 2: [2, 4, 6]
    pairs = domain_pairs(d, [1, 0, 2])
    got = [(i.tolist(), j.tolist()) for i, j in pairs]
    assert got == [([1, 5], [0, 3]), ([0, 3, 7], [2, 4, 6]), ([2, 4], [1, 5])]


def test_loss_with_fixed_lambda_equals_the_formula() -> None:
    model = make_model("test_resnet")
    recipe = mixup(model).eval()  # the recipe sets the model's mode: eval, so one batch equals three
    lam = [0.3, 0.85, 0.1]
    _fix(recipe, lam, cycle=[1, 0, 2])
    x, y, d = _batch(8)
    terms = recipe.compute_phase("classifier", (x, y, d), 0)
    want = []
    for k, (i, j) in enumerate([([1, 5], [0, 3]), ([0, 3, 7], [2, 4, 6]), ([2, 4], [1, 5])]):
        out = model(lam[k] * x[i] + (1 - lam[k]) * x[j])
        want.append(lam[k] * F.cross_entropy(out, y[i]) + (1 - lam[k]) * F.cross_entropy(out, y[j]))
    assert torch.allclose(terms["mix_ce"], torch.stack(want).mean(), rtol=1e-5)
    assert torch.equal(terms["total"], terms["mix_ce"])
    terms["total"].backward()
    assert model.conv1[0].weight.grad.abs().sum() > 0


def test_lambda_one_pair_is_the_first_domains_ce() -> None:
    model = make_model("test_resnet")
    recipe = mixup(model).eval()  # the recipe sets the model's mode from its own
    _fix(recipe, [1.0, 1.0], cycle=[0, 1])
    x, y, _ = _batch(6)
    d = torch.tensor([0, 0, 0, 1, 1, 1])
    terms = recipe.compute_phase("classifier", (x, y, d), 0)
    want = (F.cross_entropy(model(x[:3]), y[:3]) + F.cross_entropy(model(x[3:]), y[3:])) / 2
    assert torch.allclose(terms["mix_ce"], want, rtol=1e-5)


def test_one_domain_falls_back_to_a_random_permutation() -> None:
    model = make_model("test_resnet")
    recipe = mixup(model).eval()  # the recipe sets the model's mode from its own
    _fix(recipe, [0.5])
    x, y, _ = _batch(6)
    d = torch.full((6,), 4)
    torch.manual_seed(3)  # the recipe draws the cycle, then the permutation: replay them
    (i, j), = domain_pairs(d, recipe.sample_cycle(1))
    assert i.tolist() == list(range(6)) and sorted(j.tolist()) == list(range(6)) and not torch.equal(i, j)
    out = model(0.5 * x[i] + 0.5 * x[j])
    want = 0.5 * F.cross_entropy(out, y[i]) + 0.5 * F.cross_entropy(out, y[j])
    torch.manual_seed(3)
    terms = recipe.compute_phase("classifier", (x, y, d), 0)
    assert torch.allclose(terms["mix_ce"], want, rtol=1e-5)
    erm = F.cross_entropy(model(x), y)
    assert not torch.allclose(terms["mix_ce"], erm)  # it does mix, unlike pairing the domain with itself


def test_lambda_is_beta_distributed_per_pair() -> None:
    recipe = mixup(make_model("test_resnet"), alpha=0.2)
    torch.manual_seed(0)
    lam = recipe.sample_lam(4000, torch.device("cpu"))
    assert lam.shape == (4000,) and lam.min() >= 0 and lam.max() <= 1
    assert abs(float(lam.mean()) - 0.5) < 0.03
    assert float(((lam < 0.1) | (lam > 0.9)).float().mean()) > 0.5  # U-shaped at α = 0.2


def test_missing_domains_say_what_mixup_needs() -> None:
    recipe = mixup(make_model("test_resnet"))
    x, y, _ = _batch(4, size=32)
    assert Mixup.needs_domains
    with pytest.raises(egl.InputError, match=DOMAIN_MESSAGE):
        recipe.compute_phase("classifier", (x, y), 0)
    with pytest.raises(egl.InputError, match=DOMAIN_MESSAGE):
        recipe.compute_phase("classifier", {"image": x, "label": y}, 0)


def test_bad_alpha() -> None:
    with pytest.raises(egl.InputError, match="'alpha' expected a finite number > 0"):
        mixup(make_model("test_resnet"), alpha=0.0)
