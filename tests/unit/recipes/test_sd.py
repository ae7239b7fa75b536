"""SD recipe: DomainBed's spectral decoupling written out, the penalty's effect, arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model

import egl
from egl import recipes
from egl.recipes.sd import SD


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 3


def test_terms_match_domainbed() -> None:
    model = make_model("test_resnet")
    x, y = _batch()
    all_p = model(x).detach()
    loss = F.cross_entropy(all_p, y)
    penalty = (all_p ** 2).mean()  # DomainBed's SD.update
    terms = SD(model).eval().compute_phase("classifier", (x, y), 0)
    assert torch.allclose(terms["ce"], loss) and torch.allclose(terms["penalty"], penalty)
    assert torch.allclose(terms["total"], loss + 0.1 * penalty)
    shifted = SD(model, penalty_weight=2.0, target=1.5).eval().compute_phase("classifier", (x, y), 0)
    assert torch.allclose(shifted["penalty"], ((all_p - 1.5) ** 2).mean())
    assert torch.allclose(shifted["total"], loss + 2.0 * ((all_p - 1.5) ** 2).mean())


def test_penalty_keeps_the_logits_small() -> None:
    def train(weight: float) -> float:
        recipe = recipes.sd(make_model("test_resnet", eval_mode=False), penalty_weight=weight, lr=1e-2)
        recipe.fit([_batch()], steps=30, seed=0, progress=False)
        with torch.no_grad():
            return float(recipe.model.eval()(_batch()[0]).abs().max())
    assert train(1.0) < 0.5 * train(0.0)


def test_arguments_are_checked_and_registered() -> None:
    model = make_model("test_resnet")
    for bad in (float("nan"), "0", True):
        with pytest.raises(egl.InputError, match=r"egl.recipes.sd: 'target' expected a finite number"):
            recipes.sd(model, target=bad)
    with pytest.raises(egl.InputError, match=r"'penalty_weight' expected"):
        recipes.sd(model, penalty_weight=-0.1)
    recipe = egl.create("recipe", "sd", model, penalty_weight=0.01)
    assert isinstance(recipe, SD) and recipe.config()["penalty_weight"] == 0.01 and not recipe.needs_domains
