"""egl experiment --resume: an interrupted grid continues, bit-exact, and refuses another config."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import egl
from egl.experiments.config import DEFAULTS, apply_overrides, merge
from egl.experiments.runner import run
from egl.recipes.base import Recipe
from egl.train import load_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:egl.experiments. method .* but the run has train.steps")

SETTINGS = ["train.steps=3", "train.checkpoint_every=1", "train.seeds=[0, 1]", "train.progress=false",
            "data.synthetic.train_per_domain=32", "data.synthetic.val_per_domain=4", "data.synthetic.test_per_split=20",
            "eval.explain_samples=8", "model.arch=test_resnet", "eval.mask_quality=false",
            "methods={erm: {recipe: erm}, align: {recipe: align, kwargs: {warmup_steps: 1}}}"]


def _cfg(out: Path, *extra: str) -> dict:
    return apply_overrides(merge(DEFAULTS, {}), [*SETTINGS, f"output={out}", *extra])


def _results(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows if "event" not in r]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_CACHE_DIR", str(tmp_path / "cache"))


def test_an_interrupted_grid_resumes_to_the_same_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = tmp_path / "reference"
    run(_cfg(reference), echo=False)
    # the figures' runs (seed 0) keep their checkpoints; the others are deleted once evaluated
    assert sorted(p.name for p in (reference / "checkpoints").iterdir()) == ["align-all-s0", "erm-all-s0"]

    out = tmp_path / "interrupted"
    calls = {"n": 0}
    real = Recipe.training_step

    def step(self, *args, **kwargs):  # the third run (erm, seed 1) is killed at its second step
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Recipe, "training_step", step)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(out), echo=False)
    monkeypatch.setattr(Recipe, "training_step", real)
    assert len(_results(out)) == 2 * 5  # seed 0's two runs, five test splits each
    before = load_checkpoint(out / "checkpoints" / "erm-all-s1" / "last.pt")["train_seconds"]

    rows, _ = run(_cfg(out), echo=False, resume=True)
    assert _results(out) == _results(reference)  # every metric of every run, to the last digit
    returned = [json.loads(json.dumps({k: v for k, v in r.items() if k != "train_seconds"})) for r in rows]
    assert returned == _results(reference)  # (through JSON: json's NaN is one object, so NaN == NaN)
    log = [json.loads(line) for line in (out / "train" / "erm-all-s1.jsonl").read_text().splitlines()]
    resumed = [e for e in log if e.get("event") == "resume"]
    assert len(resumed) == 1 and resumed[0]["start_step"] == 1  # continued from its checkpoint, not step 0
    # its training time sums both calls: at least what the checkpoint of the killed call recorded
    killed = [r["train_seconds"] for r in rows if r["method"] == "erm" and r["seed"] == 1]
    assert len(killed) == 5 and min(killed) >= round(before, 1) > 0
    events = [json.loads(line).get("event") for line in (out / "results.jsonl").read_text().splitlines()]
    assert events[:2] == ["start", "resume"]
    assert (out / "tables.md").read_text() == (reference / "tables.md").read_text()


def test_a_grid_cut_during_evaluation_restores_the_trained_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import egl.experiments.runner as runner

    cfg = _cfg(tmp_path / "run", "train.seeds=[0]", "methods={erm: {recipe: erm}, erm2: {recipe: erm}}")
    real, calls = runner.evaluate, {"n": 0}

    def evaluate(*args, **kwargs):  # the second method's second split fails
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "evaluate", evaluate)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, echo=False)
    monkeypatch.setattr(runner, "evaluate", real)
    seconds = json.loads((tmp_path / "run" / "checkpoints" / "erm2-all-s0" / "trained.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "nothing is trained" warning: the run had finished training
        warnings.filterwarnings("ignore", message="egl.experiments. method")
        run(cfg, resume=True)
    assert "restoring erm2 on all, seed 0" in capsys.readouterr().out
    rows = [r for r in _results(tmp_path / "run") if r["method"] == "erm2"]
    assert len(rows) == 5
    full = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert {r["train_seconds"] for r in full if r.get("method") == "erm2"} == {round(seconds["train_seconds"], 1)}


def test_resume_into_a_folder_without_results_ignores_its_checkpoints(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(_cfg(out, "train.seeds=[0]", "methods={erm: {recipe: erm}}"), echo=False)
    (out / "results.jsonl").unlink()  # checkpoints of that run remain; another config resumes "into" it
    rows, _ = run(_cfg(out, "train.seeds=[0]", "methods={erm: {recipe: erm}}", "train.steps=4"), echo=False,
                  resume=True)
    log = [json.loads(line) for line in (out / "train" / "erm-all-s0.jsonl").read_text().splitlines()]
    assert log[-5]["event"] == "start" and [r["step"] for r in log[-4:]] == [0, 1, 2, 3]  # trained afresh


def test_resume_refuses_another_config_and_needs_out(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run(_cfg(out, "train.seeds=[0]", "methods={erm: {recipe: erm}}"), echo=False)
    before = (out / "results.jsonl").read_text()
    with pytest.raises(egl.InputError, match=r"'config' expected the config of the run .*train.steps"):
        run(_cfg(out, "train.seeds=[0]", "methods={erm: {recipe: erm}}", "train.steps=4"), echo=False, resume=True)
    assert (out / "results.jsonl").read_text() == before  # nothing was touched
    cfg = _cfg(out, "train.seeds=[0]", "methods={erm: {recipe: erm}}")
    cfg["output"] = None
    with pytest.raises(egl.InputError, match="'--resume' expected --out naming the results folder"):
        run(cfg, echo=False, resume=True)
    fresh = tmp_path / "fresh"  # nothing to resume: starts afresh
    rows, _ = run(_cfg(fresh, "train.seeds=[0]", "methods={erm: {recipe: erm}}"), echo=False, resume=True)
    assert len(rows) == 5
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.jsonl").write_text("not json\n")
    with pytest.raises(egl.InputError, match="'--out' expected a results folder whose results.jsonl egl wrote"):
        run(_cfg(tmp_path / "junk", "train.seeds=[0]"), echo=False, resume=True)


def test_the_cli_resumes_a_finished_grid_without_training_again(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    from egl.cli import main

    args = ["experiment", "--out", str(tmp_path / "cli"), "--no-progress",
            *(x for kv in SETTINGS if not kv.startswith("train.progress") for x in ("--set", kv)),
            "--set", "train.seeds=[0]", "--set", "methods={erm: {recipe: erm}}"]
    assert main(args) == 0
    before = _results(tmp_path / "cli")
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert "restoring erm on all, seed 0" in out and "training erm" not in out
    assert _results(tmp_path / "cli") == before


def test_a_grid_stopped_by_a_divergence_resumes_recording_it(tmp_path: Path) -> None:
    from egl.recipes import NonFiniteLossError

    out = tmp_path / "diverge"
    methods = "methods={bad: {recipe: erm, kwargs: {lr: 1.0e+12}}, erm: {recipe: erm}}"
    with pytest.raises(NonFiniteLossError, match=r"\(bad on all, seed 0; the grid stopped, train.on_diverge=stop\)"
                                                 r"\. To record the run as diverged and go on, rerun the same command "
                                                 r"\(the same --config, --preset and --set options\) with --resume "
                                                 r"--out .* --set train.on_diverge=record\."):
        run(_cfg(out, methods, "train.seeds=[0]"), echo=False)
    rows, _ = run(_cfg(out, methods, "train.seeds=[0]", "train.on_diverge=record"), echo=False, resume=True)
    bad = [r for r in rows if r["method"] == "bad"]
    assert bad and all("Lower the learning rate" in r["diverged"] and r["acc"] != r["acc"] for r in bad)
    assert all(r["acc"] == r["acc"] for r in rows if r["method"] == "erm")  # the grid went on
    tables = (out / "tables.md").read_text()
    assert "**Diverged** (a loss term became NaN or infinite; left out of every mean above" in tables
    assert ": bad on all, seed 0." in tables
    logged = len(_results(out))
    again, _ = run(_cfg(out, methods, "train.seeds=[0]", "train.on_diverge=record"), echo=False, resume=True)
    assert len(_results(out)) == logged and len(again) == len(rows)  # recorded once: not trained again


def test_on_diverge_and_channels_last_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(egl.InputError, match=r"'train.on_diverge' expected 'stop' or 'record', got 'skip'"):
        run(_cfg(out, "train.on_diverge=skip"), echo=False)
    for bad, shown in (("null", "None"), ("1", "1")):  # (1 == True: a number is not read as a switch)
        with pytest.raises(egl.InputError, match=rf"'train.channels_last' expected true, false or auto, got {shown}"):
            run(_cfg(out, f"train.channels_last={bad}"), echo=False)
    assert not out.exists()


def test_an_older_folder_with_channels_last_false_is_told_how_to_resume(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    out = tmp_path / "old"
    run(_cfg(out, "train.seeds=[0]", "train.steps=1"), echo=False)
    log = out / "results.jsonl"
    lines = log.read_text().splitlines()
    header = json.loads(lines[0])
    header["config"]["train"].update(channels_last=False, device="cuda", precision="bf16")  # as written before "auto"
    log.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # train.device=cuda is checked before the config
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # ...is compared, and refused on a machine without
    with pytest.raises(egl.InputError, match=r"add --set train.channels_last=false, the default before 'auto'"):
        run(_cfg(out, "train.seeds=[0]", "train.steps=1", "train.device=cuda", "train.precision=bf16"),
            echo=False, resume=True)
