"""Result rows to Markdown: the OOD matrix with in-distribution cells marked, per-seed means over
splits, DomainBed's held-out table, and the fallback for rows without the in-distribution flag."""

from __future__ import annotations

import math

import pytest

import egl
from egl.experiments.tables import heldout_table, pivot, summary_table


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


def test_rows_without_the_flag_still_get_a_summary_table() -> None:
    from egl.experiments.tables import render_tables  # (the fallback for rows without the flag)

    rows = [{"method": "erm", "train": "all", "seed": 0, "split": s, "acc": 0.5, "auc": 0.7} for s in "ab"]
    tables = render_tables(rows, None)
    assert "## Every test split" in tables and "| erm | all | 50.0 | 70.0 |" in tables
    assert "Del" not in tables and "RISE" not in tables


def test_rise_areas_get_their_columns_and_key_when_measured() -> None:
    from egl.experiments.tables import render_tables

    rows = [{"method": "erm", "train": "all", "seed": 0, "split": "a", "acc": 0.5, "deletion": 0.25,
             "insertion": 0.75}]
    tables = render_tables(rows, None)
    assert "| method | trained on | Acc | Del ↓ | Ins ↑ |" in tables and "| erm | all | 50.0 | 25.0 | 75.0 |" in tables
    assert "Del / Ins: RISE deletion / insertion areas" in tables


def test_heldout_table_is_domainbeds_table_for_leave_one_out() -> None:
    rows = [{"method": m, "train": f"all-but-{held}", "seed": seed, "split": split, "in_distribution": split != held,
             "acc": acc[(m, held, seed)] if split == held else 0.99}
            for acc in [{("erm", "A", 0): 0.5, ("erm", "B", 0): 0.7, ("erm", "A", 1): 0.6, ("erm", "B", 1): 0.8}]
            for m in ("erm",) for held in "AB" for seed in (0, 1) for split in "AB"]
    table = heldout_table(rows)
    assert table.splitlines() == ["| method | A | B | Avg |", "|---|---|---|---|",
                                  "| erm | 55.0 ± 7.1 | 75.0 ± 7.1 | 65.0 ± 7.1 |"]  # Avg per seed: 0.6, 0.7
    pooled = [{**r, "train": "all", "in_distribution": r["split"] == "A"} for r in rows if r["train"] == "all-but-B"]
    assert heldout_table(pooled) is None  # one run: nothing is held out in turn


def test_heldout_avg_is_nan_for_a_seed_missing_a_domain() -> None:
    rows = [{"method": "erm", "train": f"all-but-{held}", "seed": seed, "split": held, "in_distribution": False,
             "acc": math.nan if (seed, held) == (1, "B") else 0.5 + 0.2 * (held == "B")}
            for held in "AB" for seed in (0, 1)]
    line = heldout_table(rows).splitlines()[-1]
    assert line == "| erm | 50.0 ± 0.0 | 70.0 | 60.0 |"  # seed 1's Avg is not A's alone


def test_the_heldout_table_reads_the_splits_of_domains_only() -> None:
    """Synthetic leave-one-out: random / flipped / novel belong to no domain, so every run has
    three more out-of-distribution splits; the held-out table is drawn on the domains' splits."""
    from egl.experiments.tables import render_tables
    from egl.experiments.sources import Source

    source = Source("synthetic", 2, ["a", "b"], {}, {}, {}, split_domains={"test_id/A": "A", "test_id/B": "B"})
    rows = [{"method": "erm", "train": f"all-but-{held}", "seed": 0, "split": split, "acc": 0.5,
             "in_distribution": split == f"test_id/{'B' if held == 'A' else 'A'}"}
            for held in "AB" for split in ("test_id/A", "test_id/B", "random", "flipped")]
    assert heldout_table(rows) is None  # three held-out splits a run
    tables = render_tables(rows, source)
    assert "## Accuracy (%) on the held-out domain" in tables and "| method | test_id/A | test_id/B | Avg |" in tables


def test_summary_table_keeps_its_first_signature_with_a_warning() -> None:
    from egl.experiments.tables import summary_table

    rows = [{"method": "erm", "train": "A", "seed": 0, "split": s, "acc": a} for s, a in (("A", 0.9), ("B", 0.5))]
    with pytest.warns(DeprecationWarning, match=r"summary_table\(rows, split, metrics\) is deprecated"):
        old = summary_table(rows, "B", ["acc"])
    assert old == summary_table([rows[1]], ["acc"]) and "| erm | A | 50.0 |" in old
    with pytest.warns(DeprecationWarning):
        assert summary_table(rows, split="B", metrics=["acc"]) == old  # the first form by keyword
    with pytest.raises(egl.InputError, match="'metrics' expected a list of metric names"):
        summary_table(rows, "acc")
    with pytest.raises(egl.InputError, match="'legacy_metrics' expected nothing after a list of metrics"):
        summary_table(rows, ["acc"], ["auc"])
