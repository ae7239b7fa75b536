"""Validation during fit and selection by it: logged rows, the selected weights, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.train import Validation


def _data(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(n)]


def _acc(model: torch.nn.Module, data: list) -> float:
    model.eval()
    with torch.no_grad():
        return sum(float((model(x).argmax(1) == y).sum()) for x, y in data) / sum(len(y) for _, y in data)


def test_validation_is_logged_every_n_steps_and_after_the_last(tmp_path: Path) -> None:
    val = Validation(_data(2, 1), every=2)
    log = tmp_path / "log.jsonl"
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False), lr=1e-2)
    history = recipe.fit(_data(3, 0), 5, seed=0, progress=False, log_path=log, validation=val)
    assert recipe.model.training  # validation's eval mode did not outlive it (train mode, as before fit)
    assert [r["step"] for r in history if "val/acc" in r] == [1, 3, 4]  # after 2, 4 and 5 steps
    assert [r["step"] for r in val.records] == [1, 3, 4]  # the rows' steps (0-based), not the steps done
    assert history[-1]["val/acc"] == pytest.approx(_acc(recipe.model, val.loader))  # select="last": final weights
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events[-1] == {"event": "select", "select": "last", "step": 4, "val/acc": val.records[-1]["acc"],
                          "val/loss": val.records[-1]["loss"]}
    assert Validation(_data(1, 1)).due(30, 300) and not Validation(_data(1, 1)).due(31, 300)  # default: steps // 10


def test_select_acc_restores_the_most_accurate_weights() -> None:
    torch.manual_seed(0)
    val_data = _data(2, 1)
    val = Validation(val_data, every=1, select="acc")
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False), lr=0.05)  # a large lr: accuracy moves
    history = recipe.fit(_data(4, 0), 8, seed=0, progress=False, validation=val)
    accs = [r["val/acc"] for r in history]
    best = max(range(len(accs)), key=lambda i: (accs[i], -i))  # the earliest of equals
    assert val.best == val.records[best] and val.best["step"] == history[best]["step"] == best
    assert _acc(recipe.model, val_data) == pytest.approx(accs[best])
    assert val.best["step"] < val.records[-1]["step"] and val.best["acc"] > val.records[-1]["acc"], \
        "the best measurement should not be the last, for the restore to be exercised"


def test_validation_does_not_change_the_training() -> None:
    """A DataLoader draws its seed from torch's global RNG; validation must not move the run's draws
    (mixup's Beta draws and pairings come from it)."""
    def run(validation: Validation | None) -> dict:
        recipe = recipes.mixup(make_model("test_resnet", eval_mode=False))
        data = [(x, y, torch.tensor([0, 0, 1, 1])) for x, y in _data(2, 0)]
        recipe.fit(data, 4, seed=0, progress=False, validation=validation)
        return recipe.state_dict()

    val = torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % 5)
    plain = run(None)
    validated = run(Validation(torch.utils.data.DataLoader(val, batch_size=4, shuffle=True), every=1))
    assert all(torch.equal(plain[k], validated[k]) for k in plain)


def test_resume_keeps_the_records_and_the_best_weights(tmp_path: Path) -> None:
    kwargs = dict(progress=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=1, resume=True, seed=0)
    whole = Validation(_data(2, 1), every=1, select="acc")
    full = recipes.erm(make_model("test_resnet", eval_mode=False), lr=0.05)
    full.fit(_data(4, 0), 6, validation=whole, **{**kwargs, "checkpoint_dir": tmp_path / "whole"})
    first = Validation(_data(2, 1), every=1, select="acc")
    recipes.erm(make_model("test_resnet", eval_mode=False), lr=0.05).fit(_data(4, 0), 3, validation=first, **kwargs)
    second = Validation(_data(2, 1), every=1, select="acc")
    resumed = recipes.erm(make_model("test_resnet", eval_mode=False), lr=0.05)
    resumed.fit(_data(4, 0), 6, validation=second, **kwargs)
    assert second.records == whole.records and second.best == whole.best
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), resumed.state_dict().values()))
    fresh = Validation(_data(2, 1), every=1, select="acc")  # a run checkpointed with select="last" keeps no weights
    last = Validation(_data(2, 1), every=1)
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(
        _data(4, 0), 2, validation=last, **{**kwargs, "checkpoint_dir": tmp_path / "last"})
    with pytest.warns(UserWarning, match="made with select='last', which keeps no weights"):
        recipes.erm(make_model("test_resnet", eval_mode=False)).fit(
            _data(4, 0), 3, validation=fresh, **{**kwargs, "checkpoint_dir": tmp_path / "last"})
    assert [r["step"] for r in fresh.records] == [2]


@pytest.mark.parametrize("kwargs, match", [
    ({"loader": "val"}, "'loader' expected an iterable of validation batches"),
    ({"every": 0}, "'every' expected an int >= 1 or None"),
    ({"select": "loss"}, "'select' expected 'last', 'acc' or 'worst_group'"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(egl.InputError, match=match):
        Validation(**{"loader": _data(1, 0), **kwargs})


def test_bad_validation_data_is_named() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match="'validation' expected an egl.train.Validation"):
        recipe.fit(_data(1, 0), 1, progress=False, validation=_data(1, 0))
    with pytest.raises(egl.InputError, match="'loader' expected at least one validation batch"):
        recipe.fit(_data(1, 0), 1, progress=False, validation=Validation([]))
    bad = [(torch.randn(2, 3, 32, 32), torch.tensor([0, 7]))]
    with pytest.raises(egl.InputError, match=r"'loader's labels' expected class indices in \[0, 4\]"):
        recipe.fit(_data(1, 0), 1, progress=False, validation=Validation(bad))


def test_frozen_parameters_are_not_copied_and_a_later_change_to_them_is_named() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False), lr=0.05)
    recipe.model.conv1.requires_grad_(False)
    val = Validation(_data(2, 1), every=1, select="acc")
    val.run(recipe, 1, torch.device("cpu"))
    assert not any(k.startswith("model.conv1.") and "running" not in k and "num_batches" not in k
                   for k in val._best_state)  # frozen weights: not copied
    assert "model.fc.weight" in val._best_state and "model.bn1.running_mean" in val._best_state
    fc = recipe.model.fc.weight.detach().clone()
    with torch.no_grad():
        recipe.model.fc.weight.add_(1.0)
    val.finish(recipe)
    assert torch.equal(recipe.model.fc.weight, fc)  # trainable: back to the kept value
    with torch.no_grad():
        recipe.model.conv1[0].weight.add_(1.0)  # a frozen parameter changed after the selected step
    with pytest.warns(UserWarning, match="were frozen .* at the selected step and changed after it"):
        val.finish(recipe)


def test_resuming_with_selection_from_a_run_without_validation_warns(tmp_path: Path) -> None:
    kwargs = dict(progress=False, checkpoint_dir=tmp_path, checkpoint_every=1, resume=True, seed=0)
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_data(2, 0), 2, **kwargs)
    with pytest.warns(UserWarning, match="written without validation: select='acc' chooses among the measurements "
                                         "after step 2 only"):
        recipes.erm(make_model("test_resnet", eval_mode=False)).fit(
            _data(2, 0), 3, validation=Validation(_data(1, 1), select="acc"), **kwargs)


def test_validation_images_of_another_dtype_are_named() -> None:
    """float64 images (from NumPy) were a raw dtype error from the model's first convolution."""
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    bad = [(torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 1]))]
    with pytest.raises(egl.InputError, match=r"Validation: 'loader's images' expected images of the model's dtype "
                                             r"\(torch.float32\), got a torch.float64 tensor"):
        recipe.fit(_data(1, 0), 1, progress=False, validation=Validation(bad))


def test_run_names_a_bare_model_passed_for_the_recipe() -> None:
    """(An AttributeError on ``.model`` before.)"""
    model = make_model("test_resnet", eval_mode=False)
    with pytest.raises(egl.InputError, match=r"Validation.run: 'recipe' expected an egl recipe \(its model is "
                                             r"evaluated\), got a ResNet module. .*"
                                             r"egl.recipes.erm\(model\) to wrap a bare model"):
        Validation(_data(1, 0)).run(model, 1, torch.device("cpu"))  # type: ignore[arg-type]
    assert set(Validation(_data(1, 0)).run(recipes.erm(model), 1, torch.device("cpu"))) >= {"val/acc", "val/loss"}


def _grouped(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Batches of 4 with shortcut labels (-1 .. 4)."""
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(4, 3, 32, 32, generator=g), "label": torch.randint(0, 5, (4,), generator=g),
             "shortcut": torch.randint(-1, 5, (4,), generator=g)} for _ in range(n)]


def _worst_group(model: torch.nn.Module, data: list) -> float:
    from egl.metrics import worst_group_accuracy

    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(b["image"]) for b in data])
    y, s = torch.cat([b["label"] for b in data]), torch.cat([b["shortcut"] for b in data])
    return float(worst_group_accuracy(logits, y, y * 6 + s + 1))


def test_select_worst_group_restores_the_weights_best_on_the_worst_group() -> None:
    torch.manual_seed(0)
    # two classes, validated on the training images (so accuracy moves), shortcut = class: a group per class
    train = [(x, torch.tensor([0, 1, 0, 1])) for x, _ in _data(4, 0)]
    val_data = [{"image": x, "label": y, "shortcut": y} for x, y in train]
    val = Validation(val_data, every=1, select="worst_group")
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False), lr=0.01)
    history = recipe.fit(train, 12, seed=0, progress=False, validation=val)
    worst = [r["val/worst_group"] for r in history]
    best = max(range(len(worst)), key=lambda i: (worst[i], history[i]["val/acc"], -i))  # ties: accuracy
    assert val.best == val.records[best] and val.selected == val.best
    assert _worst_group(recipe.model, val_data) == pytest.approx(worst[best])
    assert all(r["val/acc"] >= r["val/worst_group"] for r in history)
    assert max(worst) > min(worst), "the worst group should move, for the selection to be exercised"


def test_worst_group_selection_names_its_data_and_a_resume_across_metrics_restarts(tmp_path: Path) -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match=r"'loader' expected dict batches with key 'shortcut' \(select='worst_"
                       r"group'.*or select='acc'"):
        recipe.fit(_data(2, 0), 1, progress=False, validation=Validation(_data(1, 1), select="worst_group"))
    with pytest.raises(egl.InputError, match=r"'min_group_size' expected at most the size of some validation group "
                       r".*got 50; the largest of \d+ groups has \d images .*Pass min_group_size=\d"):
        recipe.fit(_data(2, 0), 1, progress=False,
                   validation=Validation(_grouped(1, 1), select="worst_group", min_group_size=50))
    bad = _grouped(1, 1)
    bad[0]["shortcut"][0] = 5
    with pytest.raises(egl.InputError, match=r"'loader's shortcut labels' expected class indices in \[0, 4\], or -1"):
        recipe.fit(_data(2, 0), 1, progress=False, validation=Validation(bad, select="worst_group"))
    with pytest.raises(egl.InputError, match=r"'min_group_size' expected an int >= 1"):
        Validation(_grouped(1, 1), select="worst_group", min_group_size=0)
    kwargs = {"seed": 0, "progress": False, "checkpoint_dir": tmp_path}
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(
        _data(4, 0), 2, validation=Validation(_grouped(1, 1), every=1, select="acc"), **kwargs)
    again = Validation(_grouped(1, 1), every=1, select="worst_group")
    with pytest.warns(UserWarning, match=r"selected by 'acc', this run by 'worst_group'.*starts afresh"):
        recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_data(4, 0), 3, validation=again, resume=True,
                                                                    **kwargs)
    assert [r["step"] for r in again.records] == [2]


def test_worst_group_ties_go_to_the_more_accurate_measurement() -> None:
    """A worst group of a few images read 0 at every measurement: the earliest of equals kept the
    first measurement's nearly untrained weights (20 % accuracy) in a measured run."""
    val = Validation(_grouped(1, 1), select="worst_group")
    val.records = [{"step": 0, "acc": 0.2, "loss": 2.0, "worst_group": 0.0},
                   {"step": 1, "acc": 0.9, "loss": 0.3, "worst_group": 0.0},
                   {"step": 2, "acc": 0.9, "loss": 0.2, "worst_group": 0.0},
                   {"step": 3, "acc": 0.5, "loss": 1.0, "worst_group": 0.0}]
    assert val.best["step"] == 1
    val.records.append({"step": 4, "acc": 0.4, "loss": 1.2, "worst_group": 0.1})
    assert val.best["step"] == 4

