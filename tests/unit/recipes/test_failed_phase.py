"""A phase that fails (a NaN batch, an input check) leaves the recipe as it was: parameters and
the running statistics its training-mode forward passes updated."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.recipes import NonFiniteLossError


def _state(recipe: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in recipe.state_dict().items()}


def _same(recipe: torch.nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in recipe.state_dict().items() if not torch.equal(v, before[k])]


@pytest.mark.parametrize("name,kwargs,phase", [("erm", {}, "classifier"),
                                               ("align", {"warmup_steps": 0}, "masker"),
                                               ("align", {}, "classifier"),
                                               ("sgdrop", {}, "classifier")])
def test_a_nan_pixel_leaves_no_nan_in_the_running_statistics(name: str, kwargs: dict, phase: str) -> None:
    """Before: the classifier's 30 running mean/var tensors (ERM, ALIGN in warm-up) or the learned
    masker's (ALIGN) were NaN after the caught error, and the model answered NaN in eval mode."""
    torch.manual_seed(0)
    recipe = getattr(recipes, name)(make_model("test_resnet", eval_mode=False), **kwargs)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    recipe.fit([(x, y)], 1, progress=False)  # running statistics away from their initial values
    before = _state(recipe)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteLossError, match=rf"'{phase}/"):
        recipe.fit([(x, y)], 1, progress=False)
    assert _same(recipe, before) == []
    with torch.no_grad():
        assert torch.isfinite(recipe.model.eval()(torch.randn(2, 3, 32, 32))).all()


def test_an_input_check_that_fails_inside_a_phase_restores_them_too() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    before = _state(recipe)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 7])  # label 7 of 3 classes
    with pytest.raises(egl.InputError):
        recipe.training_step((x, y), 0, recipe.configure_optimizers())
    assert _same(recipe, before) == []


def test_a_successful_step_still_updates_them() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    before = _state(recipe)
    recipe.fit([(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))], 1, progress=False)
    changed = _same(recipe, before)
    assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("num_batches_tracked")
                                                                    for k in changed)


def test_the_copy_follows_the_buffers_after_a_dtype_change() -> None:
    """The copies are kept between phases; .double() makes new buffers, so new copies."""
    torch.manual_seed(0)
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    recipe.fit([(x, y)], 1, progress=False)
    recipe.double()
    recipe.fit([(x.double(), y)], 1, progress=False)
    before = _state(recipe)
    x[0, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteLossError):
        recipe.fit([(x.double(), y)], 1, progress=False)
    assert _same(recipe, before) == []


def test_any_other_error_inside_a_phase_restores_them_and_propagates_unchanged() -> None:
    """Any exception while computing the terms (out of memory, a bug) is passed on as it is (under
    torch.distributed the other ranks are told first: tests/integration/test_distributed.py)."""
    torch.manual_seed(0)
    model = make_model("test_resnet", eval_mode=False)
    recipe = recipes.erm(model)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    recipe.fit([(x, y)], 1, progress=False)
    before = _state(recipe)

    def fail_after_the_forward(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        raise RuntimeError("simulated out of memory")

    handle = model.get_classifier().register_forward_hook(fail_after_the_forward)
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        recipe.fit([(x, y)], 1, progress=False)
    handle.remove()
    assert _same(recipe, before) == []
