"""Which domains a run trains on (train.domains = all / each / loo / a list), and the tables
that keep in-distribution and out-of-distribution test splits apart, on folder data end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _helpers import domain_tree

import egl
from egl.cli import main
from egl.experiments.sources import load_source
from egl.experiments.tables import pivot, summary_table

# toy runs of 2 steps: ALIGN's warm-up outlasts them (the runner says so; expected here)
pytestmark = pytest.mark.filterwarnings("ignore:egl.experiments. method .* but the run has train.steps")




@pytest.fixture
def folder(tmp_path: Path) -> dict:
    return {"name": "folder", "root": str(domain_tree(tmp_path / "data", domains=("A", "B", "C"))), "image_size": 32}


def test_each_mode_names_its_runs_and_their_domains(folder: dict) -> None:
    source = load_source(folder)
    assert source.training_domains("all") == {"all": ["A", "B", "C"]}
    assert source.training_domains("each") == {"A": ["A"], "B": ["B"], "C": ["C"]}
    assert source.training_domains("loo") == {"all-but-A": ["B", "C"], "all-but-B": ["A", "C"],
                                              "all-but-C": ["A", "B"]}
    assert source.training_domains(["C", "A"]) == {"C+A": ["C", "A"]}
    sets = source.training_sets("loo")
    assert len(sets["all-but-A"]) == len(source.train["B"]) + len(source.train["C"]) == 24
    assert len(source.training_sets(["B"])["B"]) == 12
    assert source.in_distribution("A", ["A", "B"]) and not source.in_distribution("C", ["A", "B"])


def test_synthetic_test_splits_know_their_domain() -> None:
    source = load_source({"name": "synthetic", "synthetic": {"train_per_domain": 8, "val_per_domain": 2,
                                                             "test_per_split": 4}})
    assert source.in_distribution("test_id/domain0", ["domain0"])
    assert not source.in_distribution("test_id/domain1", ["domain0"])  # the other training domain's images
    assert not any(source.in_distribution(s, ["domain0", "domain1"]) for s in ("random", "flipped", "novel"))


@pytest.mark.parametrize("domains, match", [
    ("A", r"Write one domain as a list: train.domains=\[A\]"),
    ("every", "Pick 'all' .*'loo' \\(leave one domain out\\)"),
    (["A", "Z"], r"Remove \['Z'\]"),
    (["A", "A"], "List each domain once"),
    ([], "a list of distinct domains"),
])
def test_bad_train_domains_are_named(folder: dict, domains: object, match: str) -> None:
    with pytest.raises(egl.InputError, match=f"'train.domains' expected .*{match}"):
        load_source(folder).training_domains(domains)


def test_leave_one_out_needs_two_domains(folder: dict) -> None:
    with pytest.raises(egl.InputError, match="at least two domains for 'loo'"):
        load_source({**folder, "domains": ["B"]}).training_domains("loo")


def _rows(acc: dict) -> list[dict]:
    return [{"method": "erm", "train": "all-but-A", "seed": seed, "split": split, "in_distribution": split != "A",
             "acc": value} for (seed, split), value in acc.items()]


def test_pivot_marks_in_distribution_cells_and_averages_each_kind_per_seed() -> None:
    rows = _rows({(0, "A"): 0.5, (0, "B"): 0.9, (0, "C"): 0.7, (1, "A"): 0.3, (1, "B"): 0.8, (1, "C"): math.nan})
    table = pivot(rows, "acc", mark_in_distribution=True)
    head, _, line = table.splitlines()
    assert head == "| method | trained on | A | B | C | ID | OOD |"
    cells = [c.strip() for c in line.split("|")[1:-1]]
    # A is out of distribution (plain), B and C in italics; ID = per seed mean(B, C) -> 0.8, 0.8 (C's NaN skipped)
    assert cells == ["erm", "all-but-A", "40.0 ± 14.1", "*85.0 ± 7.1*", "*70.0*", "80.0 ± 0.0", "40.0 ± 14.1"]
    assert "*" not in pivot(rows, "acc")


def test_summary_table_averages_the_splits_it_is_given_per_seed() -> None:
    rows = _rows({(0, "B"): 0.9, (0, "C"): 0.7, (1, "B"): 0.6, (1, "C"): 0.6})
    line = summary_table(rows, ["acc"]).splitlines()[-1]
    assert line == "| erm | all-but-A | 70.0 ± 14.1 |"  # seeds 0.8 and 0.6, not the four cells' spread


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
    assert "'train.select' expected 'last' or 'acc'" in capsys.readouterr().err and not (tmp_path / "bad").exists()
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
                         (["--set", "train.checkpoint_every=0"], "'train.checkpoint_every' expected an int >= 1")):
        assert main([*base, *extra, "--out", str(tmp_path / "never")]) == 1
        assert match in capsys.readouterr().err
        assert not (tmp_path / "never").exists()


def test_rows_without_the_flag_still_get_a_summary_table() -> None:
    from egl.experiments.runner import render_tables

    rows = [{"method": "erm", "train": "all", "seed": 0, "split": s, "acc": 0.5, "auc": 0.7} for s in "ab"]
    tables = render_tables(rows, None)
    assert "## Every test split" in tables and "| erm | all | 50.0 | 70.0 |" in tables


def test_heldout_table_is_domainbeds_table_for_leave_one_out() -> None:
    from egl.experiments.tables import heldout_table

    rows = [{"method": m, "train": f"all-but-{held}", "seed": seed, "split": split, "in_distribution": split != held,
             "acc": acc[(m, held, seed)] if split == held else 0.99}
            for acc in [{("erm", "A", 0): 0.5, ("erm", "B", 0): 0.7, ("erm", "A", 1): 0.6, ("erm", "B", 1): 0.8}]
            for m in ("erm",) for held in "AB" for seed in (0, 1) for split in "AB"]
    table = heldout_table(rows)
    assert table.splitlines() == ["| method | A | B | Avg |", "|---|---|---|---|",
                                  "| erm | 55.0 ± 7.1 | 75.0 ± 7.1 | 65.0 ± 7.1 |"]  # Avg per seed: 0.6, 0.7
    pooled = [{**r, "train": "all", "in_distribution": r["split"] == "A"} for r in rows if r["train"] == "all-but-B"]
    assert heldout_table(pooled) is None  # one run: nothing is held out in turn


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
