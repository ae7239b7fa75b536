"""freeze_batchnorm: BatchNorm stays in eval mode through recipes and fit; affine parameters still learn."""

from __future__ import annotations

import torch
from _helpers import make_model

from egl import recipes


def _bns(model: torch.nn.Module) -> list[torch.nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_running_statistics_stay_while_affine_parameters_learn() -> None:
    model = recipes.freeze_batchnorm(make_model("test_resnet", eval_mode=False))
    stats = [(b.running_mean.clone(), b.running_var.clone(), int(b.num_batches_tracked)) for b in _bns(model)]
    weights = [b.weight.detach().clone() for b in _bns(model)]
    recipe = recipes.dre(model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])
    recipe.fit([(x, y)], 2, progress=False)
    assert model.training and not any(b.training for b in _bns(model))
    for b, (mean, var, n) in zip(_bns(model), stats):
        assert torch.equal(b.running_mean, mean) and torch.equal(b.running_var, var)
        assert int(b.num_batches_tracked) == n
    assert any(not torch.equal(b.weight, w) for b, w in zip(_bns(model), weights))


def test_unfreeze_restores_normal_train_and_eval() -> None:
    model = recipes.freeze_batchnorm(make_model("test_resnet"))
    recipes.unfreeze_batchnorm(model)
    assert all(b.training for b in _bns(model.train()))
    assert not any(b.training for b in _bns(model.eval()))


def test_a_frozen_model_still_saves_loads_and_copies(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import copy

    model = recipes.freeze_batchnorm(make_model("test_resnet"))
    torch.save(model, tmp_path / "m.pt")
    for other in (torch.load(tmp_path / "m.pt", weights_only=False), copy.deepcopy(model)):
        assert all(b.train.module is b for b in _bns(other))  # the copy's layers, not the original's
        assert not any(b.training for b in _bns(other.train()))
