"""Random hyperparameter search: draws, expansion into the grid, selection on validation accuracy."""

from __future__ import annotations

import math

import pytest

import egl
from egl.experiments import sweep
from egl.experiments.config import DEFAULTS, apply_overrides, merge

SPACE = {"lr": ["loguniform", 1e-4, 1e-2], "lambda3": ["uniform", 0.05, 0.3], "width": ["int", 1, 3],
         "mode": ["choice", ["eval", "batch"]]}


def _cfg(*extra: str) -> dict:
    return apply_overrides(merge(DEFAULTS, {}), ["train.val_every=2", *extra])


def test_draws_stay_in_their_ranges_and_depend_only_on_seed_method_and_index() -> None:
    draws = [sweep.draw(SPACE, 0, "align", i) for i in range(1, 200)]
    assert all(1e-4 <= d["lr"] <= 1e-2 and 0.05 <= d["lambda3"] <= 0.3 for d in draws)
    assert {d["width"] for d in draws} == {1, 2, 3} and {d["mode"] for d in draws} == {"eval", "batch"}
    logs = sorted(math.log10(d["lr"]) for d in draws)
    assert logs[len(logs) // 2] == pytest.approx(-3, abs=0.3)  # log-uniform: the median near the log midpoint
    assert sweep.draw(SPACE, 0, "align", 3) == draws[2]  # reproducible
    assert sweep.draw(SPACE, 1, "align", 3) != draws[2] and sweep.draw(SPACE, 0, "erm", 3) != draws[2]


def test_expand_makes_draw_zero_the_configured_kwargs_and_leaves_other_methods() -> None:
    cfg = _cfg("sweep.n=3", "methods={erm: {recipe: erm}, align: {recipe: align, kwargs: {lr: 0.001, "
               "warmup_steps: 1}, space: {lr: [loguniform, 1e-4, 1e-2], align_weight: [uniform, 0.05, 0.3]}}}")
    grid, info = sweep.expand(cfg)
    assert list(grid["methods"]) == ["erm", "align@0", "align@1", "align@2"]
    assert grid["methods"]["align@0"] == {"recipe": "align", "kwargs": {"lr": 0.001, "warmup_steps": 1}}
    assert info["align@0"] == {"sweep_of": "align", "hparams": {"align_weight": 0.1, "lr": 0.001}}
    one = grid["methods"]["align@1"]["kwargs"]
    assert one["warmup_steps"] == 1 and one["lr"] != 0.001 and one == {"warmup_steps": 1, **info["align@1"]["hparams"]}
    assert "erm" not in info and "space" not in grid["methods"]["erm"]
    assert cfg["methods"]["align"]["space"]  # the config itself is left as it was (the log records it)
    # adding a draw leaves the others' values
    assert sweep.expand({**cfg, "sweep": {"n": 5, "seed": 0}})[0]["methods"]["align@2"] == grid["methods"]["align@2"]


@pytest.mark.parametrize("override,key", [
    ("methods={a: {recipe: erm, space: {lr: [normal, 0, 1]}}}", "methods.a.space.lr"),
    ("methods={a: {recipe: erm, space: {lr: [loguniform, 0, 1]}}}", "methods.a.space.lr"),
    ("methods={a: {recipe: erm, space: {lr: [uniform, 2, 1]}}}", "methods.a.space.lr"),
    ("methods={a: {recipe: erm, space: {warmup_steps: [int, 1, 2.5]}}}", "methods.a.space.warmup_steps"),
    ("methods={a: {recipe: erm, space: {lr: [choice, []]}}}", "methods.a.space.lr"),
    ("methods={a: {recipe: erm, space: [lr]}}", "methods.a.space"),
    ("methods={a@b: {recipe: erm, space: {lr: [uniform, 0, 1]}}}", "methods.a@b"),
    ("methods={a: {recipe: align, space: {lamda3: [uniform, 0, 1]}}}", "methods.a.space.lamda3"),
    ("sweep.n=0", "sweep.n"),
    ("sweep.seed=-1", "sweep.seed"),
])
def test_bad_sweeps_are_named(override: str, key: str) -> None:
    with pytest.raises(egl.InputError, match=key.replace(".", r"\.")):
        sweep.check_sweep(_cfg("sweep.n=2", override))


def test_draws_to_choose_between_need_validation() -> None:
    cfg = apply_overrides(merge(DEFAULTS, {}), ["sweep.n=2",
                                                 "methods={a: {recipe: erm, space: {lr: [uniform, 0, 1]}}}"])
    with pytest.raises(egl.InputError, match=r"sweep\.n.*train\.val_every=N or train\.select=acc"):
        sweep.check_sweep(cfg)
    assert sweep.check_sweep({**cfg, "sweep": {"n": 1}}) == 1  # one draw: nothing to choose


def _row(method: str, seed: int, val: float, split: str = "s", acc: float = 0.5) -> dict:
    return {"method": method, "train": "all", "seed": seed, "split": split, "val_acc": val, "acc": acc,
            "in_distribution": split == "s",
            "hparams": {"lr": 0.1 * (1 + int(method[-1]))} if "@" in method else None}


def test_select_keeps_the_most_accurate_draw_per_seed_ties_to_the_lower() -> None:
    rows = [_row("erm", 0, 0.1), _row("align@0", 0, 0.5), _row("align@1", 0, 0.7), _row("align@2", 0, 0.7),
            _row("align@0", 1, 0.9), _row("align@1", 1, math.nan), _row("align@2", 1, 0.2),
            _row("align@1", 0, 0.7, split="t", acc=0.25)]
    kept, choices = sweep.select(rows)
    assert [(c["seed"], c["draw"]) for c in choices] == [(0, 1), (1, 0)]
    assert {(r["method"], r["seed"], r.get("draw"), r["split"]) for r in kept} == {
        ("erm", 0, None, "s"), ("align", 0, 1, "s"), ("align", 0, 1, "t"), ("align", 1, 0, "s")}
    table = sweep.sweep_table(rows, choices)
    assert "| align | all | 1 | lr=0.2 | 70.0 | 50.0 | 25.0 | 1 of 2 |" in table
    assert "| align | all | 0 (configured) | lr=0.1 | 70.0 |" in table  # mean of 0.5 and 0.9
    assert sweep.origin("align@12") == ("align", 12) and sweep.origin("a@b") == ("a@b", None)


def test_keep_figure_holds_one_draw_per_method_the_one_select_keeps() -> None:
    import math

    from egl.experiments.sweep import keep_figure, select

    keep: dict = {}
    ranks: dict = {}
    runs = {"erm@0": 0.5, "erm@1": 0.7, "erm@2": 0.7, "erm@3": math.nan, "align@0": 0.4, "irm": 0.1}
    rows = []
    for name, val in runs.items():
        run_rows = [{"method": name, "train": "all", "seed": 0, "split": s, "val_acc": val} for s in ("a", "b")]
        rows += run_rows
        keep_figure(keep, ranks, name, f"model of {name}", run_rows)
        assert sum(k.startswith("erm@") for k in keep) <= 1
    assert keep == {"erm@1": "model of erm@1", "align@0": "model of align@0", "irm": "model of irm"}
    _, choices = select(rows)
    assert {c["method"]: c["draw"] for c in choices} == {"erm": 1, "align": 0}  # the same choice (ties: lower draw)
