"""Gradient clipping in fit: the clipped step, the logged norm, per-phase settings, bad values."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model
from torch.utils.data import DataLoader, TensorDataset

import egl
from egl import recipes


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, 3, 64, 64, generator=g), torch.arange(8) % 5), batch_size=4)


def _erm_with_sgd() -> tuple[recipes.Recipe, dict[str, torch.optim.Optimizer]]:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    return recipe, {"classifier": torch.optim.SGD(recipe.parameters(), lr=1.0)}


def _update_norm(**kw: object) -> tuple[float, list[dict[str, float]]]:
    recipe, opts = _erm_with_sgd()
    before = [p.detach().clone() for p in recipe.parameters()]
    rows = recipe.fit(_loader(), 1, seed=0, progress=False, optimizers=opts, **kw)
    return float(torch.cat([(p.detach() - b).flatten() for p, b in zip(recipe.parameters(), before)]).norm()), rows


def test_the_step_is_clipped_and_the_unclipped_norm_is_logged() -> None:
    free, rows = _update_norm()
    assert "classifier/grad_norm" not in rows[0]  # no clipping: rows as before
    clipped, rows = _update_norm(grad_clip=1e-3)
    assert clipped == pytest.approx(1e-3, rel=1e-4)  # SGD at lr 1: the update is the clipped gradient
    assert rows[0]["classifier/grad_norm"] == pytest.approx(free, rel=1e-4)  # the norm before clipping
    loose, rows = _update_norm(grad_clip=1e6)
    assert loose == pytest.approx(free, rel=1e-5) and rows[0]["classifier/grad_norm"] == pytest.approx(free, rel=1e-4)


def test_a_dict_clips_only_the_phases_it_names() -> None:
    torch.manual_seed(0)
    recipe = recipes.align(make_model("test_resnet", eval_mode=False, output_stride=16), warmup_steps=1)
    rows = recipe.fit(_loader(), 3, seed=0, progress=False, grad_clip={"masker": 0.5})
    assert ["masker/grad_norm" in r for r in rows] == [False, True, True]  # the masker steps after its warm-up
    assert not any("classifier/grad_norm" in r for r in rows)
    rows = recipe.fit(_loader(), 2, seed=0, progress=False, grad_clip=10.0)
    assert {"masker/grad_norm", "classifier/grad_norm"} <= set(rows[1])


def test_float16_clips_the_unscaled_gradients() -> None:
    free, _ = _update_norm(precision="fp16")
    clipped, rows = _update_norm(precision="fp16", grad_clip=1e-3)
    assert clipped == pytest.approx(1e-3, rel=1e-3)
    assert rows[0]["classifier/grad_norm"] == pytest.approx(free, rel=1e-2)  # not the loss-scaled norm (x 2**16)


@pytest.mark.parametrize(("grad_clip", "match"), [
    (0.0, r"'grad_clip' expected a finite max norm > 0 \(None: no clipping\), got 0.0"),
    (-1, r"'grad_clip' expected a finite max norm > 0"), (float("inf"), r"'grad_clip' expected a finite max norm"),
    (True, r"'grad_clip' expected a finite max norm > 0 .*, got True"), ("1", r"'grad_clip' expected .*got '1'"),
    ({"maskr": 1.0}, r"'grad_clip' expected keys among the phase names \['classifier'\], got 'maskr'"),
    ({"classifier": float("nan")}, r"'grad_clip\['classifier'\]' expected a finite max norm > 0 .*, got nan"),
])
def test_bad_values_are_named_before_training(grad_clip: object, match: str) -> None:
    recipe, _ = _erm_with_sgd()
    with pytest.raises(egl.InputError, match=f"egl.train.fit: {match}"):
        recipe.fit(_loader(), 1, progress=False, grad_clip=grad_clip)


def test_no_hook_is_left_on_the_optimisers() -> None:
    recipe, opts = _erm_with_sgd()
    recipe.fit(_loader(), 1, seed=0, progress=False, optimizers=opts, grad_clip=1.0)
    assert not opts["classifier"]._optimizer_step_pre_hooks


def test_the_norm_is_taken_in_float32_and_matches_torch() -> None:
    from egl.train.grad_clip import clip_grad_norm

    g = [torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), torch.randn(7)]
    ref = [t.clone().requires_grad_() for t in g]
    for r, t in zip(ref, g):
        r.grad = t.clone()
    mine = [t.clone() for t in g]
    total = clip_grad_norm(mine, 0.5)
    assert float(total) == pytest.approx(float(torch.nn.utils.clip_grad_norm_(ref, 0.5)), rel=1e-6)
    for m, r in zip(mine, ref):
        torch.testing.assert_close(m, r.grad)
    half = [torch.full((10,), 40000.0, dtype=torch.float16), torch.full((4,), 0.5, dtype=torch.bfloat16)]
    total = clip_grad_norm(half, 1.0)  # float16's own norm of the first is inf (and the clip would zero it)
    assert float(total) == pytest.approx((10 * 40000.0**2 + 4 * 0.25) ** 0.5, rel=1e-6)
    assert torch.isfinite(half[0]).all() and float(half[0][0]) == pytest.approx(40000 / float(total), rel=1e-3)
