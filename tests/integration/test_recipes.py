"""Every registered recipe trains 3 steps on tiny timm models with finite, logged terms."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import make_model

import egl

RECIPES = egl.list_components("recipe")
MODELS = {"test_resnet": {"output_stride": 16}, "test_vit": {}, "test_convnext": {}}


def _batches(n_batches: int = 2, n: int = 8, size: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        mask = torch.zeros(n, 1, size, size)
        mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
        out.append({"image": torch.randn(n, 3, size, size, generator=g), "label": torch.arange(n) % 3,
                    "domain": torch.arange(n) // (n // 2), "mask": mask})
    return out


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("recipe_name", RECIPES)
def test_three_steps(recipe_name: str, model_name: str) -> None:
    model = make_model(model_name, eval_mode=False, **MODELS[model_name])
    kwargs = {"warmup_steps": 1} if recipe_name == "align" else {}
    recipe = egl.create("recipe", recipe_name, model, **kwargs)
    logs = recipe.fit(_batches(), steps=3, seed=0, progress=False)
    assert len(logs) == 3
    assert any(k.endswith("/total") for k in logs[-1])
    for row in logs:
        for key, value in row.items():
            assert math.isfinite(value), (recipe_name, model_name, key, value)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model_name", ["test_resnet", "test_vit"])
@pytest.mark.parametrize("recipe_name", RECIPES)
def test_two_steps_in_mixed_precision(recipe_name: str, model_name: str, precision: str) -> None:
    """Under CPU autocast (fp16: with loss scaling, inner gradients scaled too): every term
    finite, or the step skipped by the loss scaler (its scale then halves)."""
    model = make_model(model_name, eval_mode=False, **MODELS[model_name])
    kwargs = {"warmup_steps": 0} if recipe_name == "align" else {}
    recipe = egl.create("recipe", recipe_name, model, **kwargs)
    loss_scale = {"init_scale": 2.0**8} if precision == "fp16" else None
    logs = recipe.fit(_batches(n=4, size=32), steps=2, seed=0, progress=False, precision=precision,
                      loss_scale=loss_scale)
    for row in logs:
        skipped = {k.split("/")[0] for k, v in row.items() if k.endswith("/skipped") and v == 1.0}
        for key, value in row.items():
            assert math.isfinite(value) or key.split("/")[0] in skipped, (recipe_name, model_name, key, value)
