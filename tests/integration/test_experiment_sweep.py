"""egl experiment with a hyperparameter sweep: every draw trained, the best on validation reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egl.experiments.config import DEFAULTS, apply_overrides, merge
from egl.experiments.runner import run

pytestmark = pytest.mark.filterwarnings("ignore:egl.experiments. method .* but the run has train.steps")

SETTINGS = ["train.steps=2", "train.val_every=1", "train.progress=false", "sweep.n=3", "sweep.seed=4",
            "data.synthetic.train_per_domain=32", "data.synthetic.val_per_domain=4", "data.synthetic.test_per_split=20",
            "eval.explain_samples=8", "model.arch=test_resnet", "eval.mask_quality=false",
            "methods={erm: {recipe: erm, space: {lr: [loguniform, 1e-4, 1e-1]}}, irm: {recipe: irm}}"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_CACHE_DIR", str(tmp_path / "cache"))


def test_a_sweep_trains_every_draw_and_reports_the_best_on_validation(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    cfg = apply_overrides(merge(DEFAULTS, {}), [*SETTINGS, f"output={out}"])
    rows, _ = run(cfg, echo=False)
    logged = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "event" not in r]
    assert {r["method"] for r in logged} == {"erm@0", "erm@1", "erm@2", "irm"}
    draws = {r["method"]: r for r in logged if r["method"].startswith("erm@")}
    assert draws["erm@0"]["hparams"] == {"lr": 1e-3} and draws["erm@0"]["sweep_of"] == "erm"
    assert all(1e-4 <= draws[f"erm@{i}"]["hparams"]["lr"] <= 1e-1 for i in (1, 2))
    best = max(range(3), key=lambda i: (draws[f"erm@{i}"]["val_acc"], -i))
    assert {r["method"] for r in rows} == {"erm", "irm"}
    erm = [r for r in rows if r["method"] == "erm"]
    assert {r["draw"] for r in erm} == {best} and len(erm) == len([r for r in logged if r["method"] == "irm"])
    assert json.loads((out / "sweep.json").read_text()) == [
        {"method": "erm", "train": "all", "seed": 0, "draw": best, "val_acc": draws[f"erm@{best}"]["val_acc"]}]
    tables = (out / "tables.md").read_text()
    assert "## Hyperparameter search" in tables and "| erm | all | 0 (configured) | lr=0.001 |" in tables
    assert "erm@" not in tables.split("## Hyperparameter search")[0]  # the main tables name the method
    assert (out / "case_study.png").is_file()
    # a finished sweep resumes to the same selection
    again, _ = run(cfg, echo=False, resume=True)

    def same(rs: list[dict]) -> list[str]:  # (NaN metrics compare equal as text)
        return [json.dumps({k: v for k, v in r.items() if k != "train_seconds"}, sort_keys=True) for r in rs]
    assert same(again) == same(rows)


def test_a_diverging_draw_is_recorded_and_passed_over(tmp_path: Path) -> None:
    out = tmp_path / "diverge"
    cfg = apply_overrides(merge(DEFAULTS, {}), [*SETTINGS, f"output={out}", "sweep.n=2", "train.steps=3",
                                                "methods={erm: {recipe: erm, space: {lr: [choice, [1.0e+12]]}}}"])
    rows, _ = run(cfg, echo=False)
    logged = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    bad = [r for r in logged if r.get("method") == "erm@1"]
    assert bad and all("Lower the learning rate" in r["diverged"] for r in bad)
    assert {r["draw"] for r in rows} == {0} and all(r["acc"] == r["acc"] for r in rows)  # draw 0, real numbers
    assert "| erm | all | 1, diverged | lr=1e+12 | – |" in (out / "tables.md").read_text()
    again, _ = run(cfg, echo=False, resume=True)  # the diverged draw is finished: not trained again
    assert [r["draw"] for r in again] == [r["draw"] for r in rows]
    logged = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len([r for r in logged if r.get("method") == "erm@1"]) == len(bad)  # its rows once, not again


def test_a_sweep_selected_by_worst_group_keeps_the_draw_best_on_it(tmp_path: Path) -> None:
    """train.select=worst_group: each run keeps its weights best on the validation split's worst
    (class, shortcut) group, and the sweep its draw best on it (not on accuracy)."""
    out = tmp_path / "worst"
    cfg = apply_overrides(merge(DEFAULTS, {}), [*SETTINGS, f"output={out}", "train.select=worst_group",
                                                "eval.min_group_size=1", "methods={erm: {recipe: erm, space: "
                                                "{lr: [loguniform, 1e-4, 1e-1]}}}"])
    rows, _ = run(cfg, echo=False)
    logged = [r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines()) if "event" not in r]
    draws = {r["method"]: r for r in logged}
    assert all(0 <= r["val_worst_group"] <= r["val_acc"] for r in logged)
    best = max(range(3), key=lambda i: (draws[f"erm@{i}"]["val_worst_group"], -i))
    assert {r["draw"] for r in rows} == {best}
    assert json.loads((out / "sweep.json").read_text())[0]["val_worst_group"] == draws[f"erm@{best}"]["val_worst_group"]
    log = [json.loads(line) for line in (out / "train" / "erm@0-all-s0.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "select" and log[-1]["select"] == "worst_group"
    assert log[-1]["val/worst_group"] == max(r["val/worst_group"] for r in log if "val/worst_group" in r
                                             and "event" not in r)
    tables = (out / "tables.md").read_text()
    assert "Val worst group" in tables and "| val acc | val worst group | ID acc |" in tables
