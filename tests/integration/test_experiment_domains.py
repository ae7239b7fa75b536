"""Experiments on folder data end to end: leave one domain out, the in-distribution flags of
`egl experiment` and `egl eval`, DomainBed's tables, held-out ("oracle") validation, and settings
refused before anything is written. Unit tests: tests/unit/experiments/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _helpers import domain_tree

from egl.cli import main
from egl.experiments.sources import load_source

# toy runs of 2 steps: ALIGN's warm-up outlasts them (the runner says so; expected here)
pytestmark = pytest.mark.filterwarnings("ignore:egl.experiments. method .* but the run has train.steps")


@pytest.fixture
def folder(tmp_path: Path) -> dict:
    return {"name": "folder", "root": str(domain_tree(tmp_path / "data", domains=("A", "B", "C"))), "image_size": 32}


def test_leave_one_out_experiment_on_folder_data(folder: dict, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "loo"
    args = ["--set", "data.name=folder", "--set", f"data.root={folder['root']}", "--set", "data.image_size=32",
            "--set", "data.batch_size=8", "--set", "train.steps=2", "--set", "train.domains=loo",
            "--set", "eval.explain_samples=4", "--set", "model.arch=test_resnet", "--set", "eval.mask_quality=false",
            "--set", "methods={erm: {recipe: erm}}", "--out", str(out), "--no-progress"]
    assert main(["experiment", *args]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()][1:]
    assert {(r["train"], r["split"]): r["in_distribution"] for r in rows} == {
        (f"all-but-{held}", split): split != held for held in "ABC" for split in "ABC"}
    tables = (out / "tables.md").read_text()
    assert "| erm | all-but-B | *" in tables and "| ID | OOD |" in tables
    assert "## Out of distribution" in tables and "## In distribution" in tables
    assert "No split here is out of distribution" not in tables
    assert "## Accuracy (%) on the held-out domain" in tables and "| method | A | B | C | Avg |" in tables
    assert (out / "train" / "erm-all-but-C-s0.jsonl").is_file()

    assert "selected_step" not in rows[0] and "val/acc" not in (out / "train" / "erm-all-but-C-s0.jsonl").read_text()

    pooled = tmp_path / "all"  # and model selection on the training domains' validation split
    assert main(["experiment", *args, "--set", "train.domains=all", "--set", "train.select=acc",
                 "--set", "train.val_every=1", "--out", str(pooled)]) == 0
    tables = (pooled / "tables.md").read_text()
    assert "No split here is out of distribution" in tables and "## Out of distribution" not in tables
    rows = [json.loads(line) for line in (pooled / "results.jsonl").read_text().splitlines()][1:]
    log = [json.loads(line) for line in (pooled / "train" / "erm-all-s0.jsonl").read_text().splitlines()]
    accs = [r["val/acc"] for r in log if "val/acc" in r and "event" not in r]
    assert len(accs) == 2 and log[-1]["event"] == "select" and log[-1]["val/acc"] == max(accs)
    assert all(r["val_acc"] == max(accs) and r["selected_step"] == log[-1]["step"] for r in rows)
    assert "Val acc" in tables
    capsys.readouterr()
    assert main(["experiment", *args, "--set", "train.select=best", "--out", str(tmp_path / "bad")]) == 1
    assert "'train.select' expected 'last', 'acc' or 'worst_group'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert main(["experiment", *args, "--set", "train.val_every=0", "--out", str(tmp_path / "bad")]) == 1
    assert "'train.val_every' expected an int >= 1" in capsys.readouterr().err

    capsys.readouterr()  # egl train trains one model: a list of domains, not each / loo
    assert main(["train", "--method", "erm", *args, "--out", str(tmp_path / "t")]) == 1
    assert "'train.domains' expected 'all' or a list of domains" in capsys.readouterr().err
    assert main(["train", "--method", "erm", *args, "--set", "train.domains=[A, B]", "--out", str(tmp_path / "t")]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "t" / "model.pt")]) == 0
    flags = {(r := json.loads(line))["split"]: r["in_distribution"] for line in capsys.readouterr().out.splitlines()}
    assert flags == {"A": True, "B": True, "C": False}
    # the flag follows what the model trained on, not the domains selected for the evaluation...
    assert main(["eval", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--set", "data.domains=[B, C]"]) == 0
    flags = {(r := json.loads(line))["split"]: r["in_distribution"] for line in capsys.readouterr().out.splitlines()}
    assert flags == {"B": True, "C": False}
    other = domain_tree(tmp_path / "other", domains=("X", "A"))  # ...nor a domain of the same name in other data
    assert main(["eval", "--checkpoint", str(tmp_path / "t" / "model.pt"), "--set", f"data.root={other}"]) == 0
    flags = {(r := json.loads(line))["split"]: r["in_distribution"] for line in capsys.readouterr().out.splitlines()}
    assert flags == {"X": False, "A": False}


def test_bad_domain_settings_fail_before_a_folder_is_made(folder: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    base = ["experiment", "--set", "data.name=folder", "--set", f"data.root={folder['root']}", "--no-progress"]
    for extra, match in ((["--set", "data.domains=[A]", "--set", "train.domains=loo"], "at least two domains"),
                         (["--set", "eval.splits=[Z]"], "'eval.splits' expected names among"),
                         (["--set", "train.checkpoint_every=0"], "'train.checkpoint_every' expected an int >= 1"),
                         (["--set", "eval.min_group_size=0"], "'eval.min_group_size' expected an int >= 1"),
                         (["--set", "train.val_domains=held_out"], "'train.val_domains' expected 'train' unless")):
        assert main([*base, *extra, "--out", str(tmp_path / "never")]) == 1
        assert match in capsys.readouterr().err
        assert not (tmp_path / "never").exists()
    train = ["train", "--method", "erm", *base[1:], "--set", "train.select=acc", "--set", "train.val_domains=held_out",
             "--out", str(tmp_path / "never")]  # egl train: all domains, none held out; its own hint
    assert main(train) == 1
    err = capsys.readouterr().err
    assert "no domain outside the run's training domains has validation images" in err and "egl train: a list" in err
    assert not (tmp_path / "never").exists()
    import shutil  # a domain without one of the classes: refused, unless data.allow_missing_classes=true

    shutil.rmtree(Path(folder["root"]) / "B" / next(p.name for p in (Path(folder["root"]) / "B").iterdir()))
    tiny = ["--set", "data.image_size=32", "--set", "data.batch_size=4", "--set", "train.steps=1",
            "--set", "model.arch=test_resnet", "--set", "eval.explain_samples=2", "--set", "eval.mask_quality=false",
            "--set", "methods={erm: {recipe: erm}}"]
    assert main([*base, *tiny, "--out", str(tmp_path / "never")]) == 1
    assert "(data.allow_missing_classes=true in experiments)" in capsys.readouterr().err
    assert main([*base, *tiny, "--set", "data.allow_missing_classes=true", "--out", str(tmp_path / "ok")]) == 0


def test_held_out_validation_uses_the_other_domains_validation_splits(
        folder: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import egl.experiments.runner as runner

    source = load_source(folder)
    assert len(source.validation_set(["A"], held_out=True)) == len(source.val["B"]) + len(source.val["C"])
    assert source.validation_set(["A", "B", "C"], held_out=True) is None
    seen = []
    real = runner.train_method
    monkeypatch.setattr(runner, "train_method", lambda *a, **k: seen.append(a[6] and len(a[6])) or real(*a, **k))
    args = ["experiment", "--set", "data.name=folder", "--set", f"data.root={folder['root']}", "--set",
            "data.image_size=32", "--set", "data.batch_size=8", "--set", "train.steps=1", "--set",
            "model.arch=test_resnet", "--set", "eval.explain_samples=2", "--set", "eval.mask_quality=false",
            "--set", "methods={erm: {recipe: erm}}", "--set", "train.select=acc", "--set", "train.val_domains=held_out",
            "--no-progress"]
    assert main([*args, "--set", "train.domains=loo", "--out", str(tmp_path / "oracle")]) == 0
    assert seen == [len(source.val["A"])] * 3  # all-but-A selects on A's validation split, and so on (4 each)
    capsys.readouterr()
    assert main([*args, "--set", "train.domains=all", "--out", str(tmp_path / "none")]) == 1  # nothing held out
    assert "'train.select' expected a run with a validation split, got none for this run (train.val_domains=held_out" \
        in capsys.readouterr().err and not (tmp_path / "none").exists()


def test_experiment_on_a_waterbirds_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from _helpers import waterbirds_table

    root = waterbirds_table(tmp_path / "wb", n=40)
    out = tmp_path / "wb-run"
    args = ["--set", "data.name=csv", "--set", f"data.root={root}", "--set", "data.columns=waterbirds",
            "--set", "data.mask_dir=segmentations", "--set", "data.image_size=32", "--set", "data.batch_size=8",
            "--set", "train.steps=2", "--set", "eval.explain_samples=4", "--set", "eval.min_group_size=1",
            "--set", "model.arch=test_resnet", "--set", "eval.mask_quality=false",
            "--set", "methods={erm: {recipe: erm}, align: {recipe: align, kwargs: {masker: ground_truth}}}",
            "--out", str(out), "--no-progress"]
    assert main(["experiment", *args]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()][1:]
    assert {(r["method"], r["train"], r["split"]) for r in rows} == {("erm", "all", "test"), ("align", "all", "test")}
    for r in rows:  # the place column read as the shortcut: shortcut rate and worst (class, place) group
        assert r["in_distribution"] is True and 0 <= r["shortcut"] <= 1 and 0 <= r["worst_group"] <= r["acc"]
        assert 0 <= r["energy"] <= 1  # masks from the segmentations folder
    assert "Worst group" in (out / "tables.md").read_text()
    capsys.readouterr()  # a preset the table does not fit is named before anything is written
    assert main(["experiment", *args, "--set", "data.columns=default", "--out", str(tmp_path / "bad")]) == 1
    assert "'columns' expected columns the header" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    # an argument the evaluation's explainer does not take is named before training, not after
    assert main(["experiment", *args, "--set", "eval.explainer=smoothed", "--set", "eval.explainer_kwargs={samples: 0}",
                 "--out", str(tmp_path / "bad")]) == 1
    assert "'samples' expected an int >= 1" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_egl_eval_refuses_data_whose_classes_are_not_the_models(folder: dict, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A model trained on [cat, dog] evaluated on a folder with [aardvark, cat, dog] read 'cat' as
    class 1 and printed an accuracy."""
    tiny = ["--set", "data.name=folder", "--set", f"data.root={folder['root']}", "--set", "data.image_size=32",
            "--set", "data.batch_size=4", "--set", "train.steps=1", "--set", "model.arch=test_resnet",
            "--set", "eval.explain_samples=2", "--no-progress"]
    out = tmp_path / "erm"
    assert main(["train", "--method", "erm", *tiny, "--out", str(out)]) == 0
    assert torch.load(out / "model.pt", weights_only=True)["classes"] == ["cat", "dog"]
    other = domain_tree(tmp_path / "other", domains=("A", "B", "C"), classes=("aardvark", "cat", "dog"))
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--set", f"data.root={other}"]) == 1
    assert ("egl eval: 'data' expected test data with the classes the model was trained on ['cat', 'dog'], got the "
            "classes ['aardvark', 'cat', 'dog']") in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--split", "A"]) == 0  # its own data: fine


def test_integer_named_classes_may_be_a_prefix() -> None:
    import egl
    from egl.experiments.commands import check_same_classes

    check_same_classes({"num_classes": 3, "classes": ["0", "1", "2"]}, ["0", "1"])  # no class 2 in the test table
    check_same_classes({"num_classes": 3}, ["0", "1", "2"])  # an older file: by number
    with pytest.raises(egl.InputError, match=r"'data' expected test data with the classes the model was trained on "
                                             r"\['0', '1', '2'\], got the classes \['0', '1', '2', '3'\]"):
        check_same_classes({"num_classes": 3, "classes": ["0", "1", "2"]}, ["0", "1", "2", "3"])
    with pytest.raises(egl.InputError, match=r"trained on 2 classes, got the classes \['cat'\]"):
        check_same_classes({"num_classes": 2}, ["cat"])
