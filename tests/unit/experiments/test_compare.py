"""Paired comparison against a baseline: the statistics against scipy and hand counts, the pairing
by (training set, seed), the metric's direction, the table, reading results files, the CLI."""

from __future__ import annotations

import itertools
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import egl
from egl.experiments.compare import comparison_table, holm, paired_comparison, read_results, sign_flip_p


def _rows(scores: dict[str, list[float]], *, train: str = "all", split: str = "ood", metric: str = "acc",
          in_distribution: bool = False) -> list[dict]:
    return [{"method": m, "train": train, "seed": seed, "split": split, "in_distribution": in_distribution,
             metric: v} for m, values in scores.items() for seed, v in enumerate(values)]


def test_statistics_match_scipy_and_the_t_interval() -> None:
    base, mine = [0.50, 0.55, 0.60, 0.52, 0.58], [0.56, 0.57, 0.69, 0.55, 0.60]
    (c,) = paired_comparison(_rows({"erm": base, "align": mine}))
    d = np.subtract(mine, base)
    assert (c.method, c.baseline, c.n, c.better, c.skipped) == ("align", "erm", 5, 5, 0)
    assert c.mean == pytest.approx(d.mean())
    assert c.p_t == pytest.approx(stats.ttest_rel(mine, base).pvalue)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.p_sign_flip == pytest.approx(2 / 32)  # every difference positive: only all-+ and all-- are as far


def test_sign_flip_counts_assignments_by_hand_and_samples_above_16_pairs() -> None:
    assert sign_flip_p(np.array([1.0, 2.0, 3.0])) == pytest.approx(2 / 8)
    # [3, -1, 1]: mean 1; |mean| >= 1 for (+,+,+), (+,-,+), (+,+,-)... counted by hand below
    d = np.array([3.0, -1.0, 1.0])
    count = sum(abs(np.dot(s, d)) / 3 >= 1 - 1e-12 for s in itertools.product((1, -1), repeat=3))
    assert sign_flip_p(d) == pytest.approx(count / 8)
    assert sign_flip_p(np.zeros(4)) == 1.0
    d = np.random.default_rng(0).normal(0.3, 1.0, 17)
    exact = np.mean([abs(np.dot(s, d)) >= abs(d.sum()) - 1e-9 for s in itertools.product((1, -1), repeat=17)])
    assert sign_flip_p(d, seed=1) == pytest.approx(exact, abs=0.01)


def test_pairs_are_training_set_and_seed_and_unpaired_or_nan_units_are_left_out() -> None:
    rows = _rows({"erm": [0.5, 0.6, 0.7], "align": [0.6, 0.7]}) + _rows({"erm": [0.4], "align": [0.5]}, train="B")
    rows[1]["acc"] = math.nan  # erm seed 1 on 'all' diverged
    (c,) = paired_comparison(rows)
    # pairs: (all, 0) +0.1, (B, 0) +0.1; left out: (all, 1) NaN, (all, 2) erm only
    assert (c.n, c.skipped, c.unpaired, c.better) == (2, 2, 1, 2) and c.mean == pytest.approx(0.1)
    assert "| align | erm | ood | 2 (1 unpaired, 1 undefined) |" in comparison_table(rows, over=["ood"])
    assert math.isnan(c.p_t)  # equal differences: no t statistic
    one = paired_comparison(_rows({"erm": [0.5], "align": [0.7]}))[0]
    assert one.n == 1 and math.isnan(one.ci_low) and one.p_sign_flip == 1.0


def test_splits_are_averaged_per_pair_as_the_tables_do_skipping_undefined_ones() -> None:
    rows = (_rows({"erm": [0.2], "align": [0.4]}, split="x") + _rows({"erm": [0.6], "align": [0.6]}, split="y")
            + _rows({"erm": [0.9], "align": [0.1]}, split="z", in_distribution=True)
            + _rows({"erm": [math.nan], "align": [math.nan]}, split="w"))
    assert paired_comparison(rows, over="ood")[0].mean == pytest.approx(0.1)  # mean(0.4, 0.6) - mean(0.2, 0.6)
    assert paired_comparison(rows, over="id")[0].mean == pytest.approx(-0.8)
    assert paired_comparison(rows, over="x")[0].mean == pytest.approx(0.2)
    assert paired_comparison(rows, over="all")[0].mean == pytest.approx((0.4 + 0.6 + 0.1 - 0.2 - 0.6 - 0.9) / 3)


def test_lower_is_better_metrics_count_a_drop_as_better() -> None:
    (c,) = paired_comparison(_rows({"erm": [0.4, 0.5], "align": [0.2, 0.3]}, metric="shortcut"), "shortcut")
    assert c.better == 2 and c.mean == pytest.approx(-0.2)


def test_holm_by_hand_keeps_order_caps_at_one_and_skips_tests_not_made() -> None:
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.2]) == [0.2]
    nan, *p = holm([math.nan, 0.02, 0.04])  # a NaN (no test) is not one of the k
    assert math.isnan(nan) and p == pytest.approx([0.04, 0.04])
    with pytest.raises(egl.InputError, match="'p_values' expected p-values in \\[0, 1\\]"):
        holm([1.5])


def test_several_methods_are_holm_adjusted_by_default_and_none_gives_the_raw_p_values() -> None:
    rows = _rows({"erm": [0.50, 0.55, 0.60, 0.52], "align": [0.56, 0.57, 0.69, 0.55],
                  "irm": [0.49, 0.58, 0.59, 0.50]})
    raw = paired_comparison(rows, adjust="none")
    adjusted = paired_comparison(rows)
    assert [c.adjust for c in raw] == ["none"] * 2 and [c.adjust for c in adjusted] == ["holm"] * 2
    for kind in ("p_t", "p_sign_flip"):
        assert [getattr(c, kind) for c in adjusted] == pytest.approx(holm([getattr(c, kind) for c in raw]))
    assert adjusted[0].p_t == pytest.approx(2 * stats.ttest_rel([0.56, 0.57, 0.69, 0.55],
                                                                [0.50, 0.55, 0.60, 0.52]).pvalue)
    assert [c.mean for c in adjusted] == [c.mean for c in raw]
    assert "p (paired t, Holm) | p (sign-flip, Holm)" in comparison_table(rows, over=["ood"])
    assert "p (paired t) | p (sign-flip) |" in comparison_table(rows, over=["ood"], adjust="none")


def test_the_baseline_defaults_to_erm_else_the_first_method() -> None:
    rows = _rows({"align": [0.6, 0.7], "erm": [0.5, 0.5], "irm": [0.4, 0.4]})
    assert [(c.method, c.baseline) for c in paired_comparison(rows)] == [("align", "erm"), ("irm", "erm")]
    rows = _rows({"align": [0.6, 0.7], "irm": [0.4, 0.4]})
    assert [(c.method, c.baseline) for c in paired_comparison(rows)] == [("irm", "align")]


@pytest.mark.parametrize("kwargs, arg, message", [
    ({"over": "test"}, "over", "one of ['ood', 'id', 'all'] or a test split of the rows ['ood']"),
    ({"baseline": "dro"}, "baseline", "one of the rows' methods ['erm', 'align'], got 'dro'"),
    ({"metric": "accuracy"}, "metric", "a metric of the rows ['acc'], got 'accuracy'"),
    ({"confidence": 95.0}, "confidence", "a float in (0, 1), got 95.0"),
    ({"adjust": "bonferroni"}, "adjust", "one of ['holm', 'none'], got 'bonferroni'"),
])
def test_bad_arguments_are_named(kwargs: dict, arg: str, message: str) -> None:
    with pytest.raises(egl.InputError, match=f"'{arg}'") as info:
        paired_comparison(_rows({"erm": [0.5], "align": [0.6]}), **kwargs)
    assert message in str(info.value)
    with pytest.raises(egl.InputError, match="results of at least two methods, got 1 method"):
        paired_comparison(_rows({"erm": [0.5]}))


def test_the_table_prints_percentage_points_and_what_few_pairs_allow() -> None:
    table = comparison_table(_rows({"erm": [0.50, 0.55], "align": [0.58, 0.61]}), over=["ood"])
    head, _, line = table.splitlines()
    assert head.startswith("| Method | vs | Splits | Pairs | Δ Acc | 95% CI |")
    cells = [c.strip() for c in line.split("|")[1:-1]]
    assert cells[:5] == ["align", "erm", "ood", "2", "+7.0"] and cells[7:] == ["0.500", "2/2"]


def test_read_results_prefixes_names_found_in_several_files(tmp_path: Path) -> None:
    for name, acc in (("box", 0.6), ("exact", 0.5)):
        (tmp_path / name).mkdir()
        lines = [{"event": "start", "config": {}}] + _rows({"align": [acc, acc], name: [0.1, 0.1]})
        (tmp_path / name / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = read_results([tmp_path / "box", tmp_path / "exact" / "results.jsonl"])
    assert list(dict.fromkeys(r["method"] for r in rows)) == ["box/align", "box", "exact/align", "exact"]
    (c,) = [c for c in paired_comparison(rows, baseline="exact/align") if c.method == "box/align"]
    assert c.n == 2 and c.mean == pytest.approx(0.1)
    # more seeds of one experiment, run into another folder: merged, not told apart
    (tmp_path / "more").mkdir()
    later = _rows({"align": [0.7, 0.7], "erm": [0.4, 0.5]})
    lines = [{"event": "start"}] + [{**r, "seed": r["seed"] + 2} for r in later]
    (tmp_path / "more" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    lines = [{"event": "start"}] + _rows({"align": [0.6, 0.6], "erm": [0.5, 0.5]})
    (tmp_path / "first.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (c,) = paired_comparison(read_results([tmp_path / "first.jsonl", tmp_path / "more"]))
    assert (c.method, c.baseline, c.n) == ("align", "erm", 4)
    with pytest.raises(egl.InputError, match="'paths' expected results.jsonl files"):
        read_results([tmp_path / "missing"])
    (tmp_path / "empty.jsonl").write_text(json.dumps({"event": "start"}) + "\n")
    with pytest.raises(egl.InputError, match="a results.jsonl holding result rows"):
        read_results([tmp_path / "empty.jsonl"])
    with pytest.raises(egl.InputError, match="'paths' expected each results file once"):
        read_results([tmp_path / "box", tmp_path / "box" / "results.jsonl"])


def test_variants_in_folders_of_one_name_get_the_shortest_distinct_prefix(tmp_path: Path) -> None:
    for parent, acc in (("a", 0.6), ("b", 0.5)):
        (tmp_path / parent / "box").mkdir(parents=True)
        lines = [{"event": "start"}] + _rows({"align": [acc, acc], "erm": [0.4, 0.4]})
        (tmp_path / parent / "box" / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rows = read_results([tmp_path / "a" / "box", tmp_path / "b" / "box"])
    assert list(dict.fromkeys(r["method"] for r in rows)) == ["a/box/align", "a/box/erm", "b/box/align", "b/box/erm"]
    with pytest.raises(egl.InputError, match=r"'baseline' expected the method to compare against \(several are "
                                             r"named erm\), got none, with \['a/box/erm', 'b/box/erm'\]"):
        paired_comparison(rows)
    (c, *_) = paired_comparison(rows, baseline="b/box/align")
    assert c.method == "a/box/align" and c.mean == pytest.approx(0.1)


def test_a_sweeps_rows_are_reduced_to_the_kept_draws(tmp_path: Path) -> None:
    rows = [{**r, "method": f"align@{d}", "val_acc": 0.9 if d == 1 else 0.5}
            for d, acc in ((0, 0.9), (1, 0.6)) for r in _rows({"x": [acc, acc]})]
    lines = [{"event": "start"}] + rows + _rows({"erm": [0.5, 0.5]})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (c,) = paired_comparison(read_results([tmp_path]))
    assert c.method == "align" and c.mean == pytest.approx(0.1)  # draw 1 (val 0.9): 0.6, not draw 0's 0.9


def test_splits_count_only_where_both_scores_are_finite_and_old_rows_need_over_all() -> None:
    rows = (_rows({"erm": [0.2], "align": [0.4]}, split="x") + _rows({"erm": [math.nan], "align": [0.9]}, split="y"))
    (c,) = paired_comparison(rows)
    assert c.mean == pytest.approx(0.2)  # split y: the baseline has no score there, so neither counts
    old = [{k: v for k, v in r.items() if k != "in_distribution"} for r in rows]
    with pytest.raises(egl.InputError, match="'over' expected rows that say which splits are in distribution"):
        paired_comparison(old, over="ood")
    assert paired_comparison(old, over="all")[0].mean == pytest.approx(0.2)


def test_equal_differences_have_no_t_statistic_despite_rounding() -> None:
    rows = _rows({"erm": [0.2, 0.5, 0.7], "align": [0.3, 0.6, 0.8]})  # differences 0.1 up to rounding
    (c,) = paired_comparison(rows)
    assert math.isnan(c.p_t) and c.ci_low == pytest.approx(c.ci_high) and c.p_sign_flip == pytest.approx(0.25)


def test_sign_flip_p_is_exact_for_differences_of_any_size_and_checks_them() -> None:
    assert sign_flip_p(np.array([1000.1, -1000.3, 0.1, 0.2])) == 1.0  # every assignment is as far from 0
    for bad in (np.array([]), np.array([1.0, math.nan]), np.ones((2, 2))):
        with pytest.raises(egl.InputError, match="'diffs' expected a non-empty 1-D array of finite differences"):
            sign_flip_p(bad)


def test_metrics_without_a_direction_count_no_winner_and_non_metrics_are_refused() -> None:
    rows = _rows({"erm": [0.2, 0.3], "align": [0.4, 0.1]}, metric="area")
    (c,) = paired_comparison(rows, "area")
    assert c.better is None and "| – |" in comparison_table(rows, "area", over=["ood"]).splitlines()[-1]
    with pytest.raises(egl.InputError, match="'metric' expected a metric of the rows \\['area'\\], got 'seed'"):
        paired_comparison(rows, "seed")
    assert "| 97.5% CI |" in comparison_table(rows, "area", over=["ood"], confidence=0.975)


def test_the_experiment_tables_hold_the_comparison_against_erm() -> None:
    from egl.experiments.tables import render_tables

    rows = _rows({"erm": [0.5, 0.55], "align": [0.58, 0.61]}) + _rows(
        {"erm": [0.9, 0.9], "align": [0.92, 0.91]}, split="iid", in_distribution=True)
    tables = render_tables(rows, None)
    assert "## Against erm: accuracy differences paired by training set and seed" in tables
    assert "| align | erm | id | 2 | +1.5 |" in tables and "| align | erm | ood | 2 | +7.0 |" in tables
    assert "Against" not in render_tables(_rows({"erm": [0.5, 0.6]}), None)


def test_egl_compare_prints_one_table_per_metric(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from egl.cli import main

    rows = _rows({"erm": [0.5, 0.55], "align": [0.58, 0.61]}) + _rows(
        {"erm": [0.4, 0.5], "align": [0.3, 0.2]}, metric="shortcut", split="o2")
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [{"event": "start"}, *rows]))
    assert main(["compare", str(tmp_path), "--metric", "acc", "--metric", "shortcut", "--over", "ood"]) == 0
    out = capsys.readouterr().out
    assert "| align | erm | ood | 2 | +7.0 |" in out and "| align | erm | ood | 2 | -20.0 |" in out
    assert main(["compare", str(tmp_path), "--over", "nowhere"]) == 1
    assert "egl compare: '--over' expected one of ['ood', 'id', 'all'] or a test split" in capsys.readouterr().err
    assert main(["compare", str(tmp_path), "--metric", "acc", "--metric", "accuracy"]) == 1  # before any table
    captured = capsys.readouterr()
    assert captured.out == "" and "egl compare: '--metric' expected a metric of the rows" in captured.err
    old = [{k: v for k, v in r.items() if k != "in_distribution"} for r in rows]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert main(["compare", str(tmp_path)]) == 0  # rows of older egl: every split, not id/ood
    assert "| align | erm | all | 2 |" in capsys.readouterr().out
    assert main(["compare", str(tmp_path), "--adjust", "none"]) == 0
    assert "p (paired t) | p (sign-flip) |" in capsys.readouterr().out


def test_results_run_with_other_settings_are_compared_with_a_warning(tmp_path: Path) -> None:
    def write(folder: str, steps: int, methods: dict, scores: dict) -> Path:
        path = tmp_path / folder
        path.mkdir()
        header = {"event": "start", "config": {"train": {"steps": steps, "seeds": [0, 1]}, "methods": methods}}
        path.joinpath("results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [header, *_rows(scores)]))
        return path

    erm, align = {"recipe": "erm"}, {"recipe": "align"}
    a = write("a", 20, {"erm": erm, "align": align}, {"erm": [0.5, 0.6], "align": [0.6, 0.7]})
    b = write("b", 12, {"align_gt": align, "align": {"recipe": "align", "kwargs": {"warmup_steps": 4}}},
              {"align_gt": [0.7, 0.8], "align": [0.6, 0.7]})
    with pytest.warns(UserWarning, match=r"compare.read_results: the results were run with other settings: "
                      r".*b/results.jsonl differs from .*a/results.jsonl in train.steps, methods.align\. Their "
                      r"rows are paired as one experiment"):
        read_results([a, b])
    c = write("c", 20, {"align_gt": align}, {"align_gt": [0.7, 0.8]})  # other methods, other seeds: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_results([a, c])
