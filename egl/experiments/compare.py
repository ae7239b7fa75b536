"""Paired comparison of methods against a baseline: is the difference larger than the seeds' noise?

Two methods of one experiment are trained on the same training sets with the same seeds (the
seed fixes the data's draw and the model's initialisation), so their scores pair up: one pair
per ``(training set, seed)``, the *unit*. Per unit the score is the metric's mean over the
chosen test splits (the run's out-of-distribution splits, its in-distribution ones, all, or one
named split), and the difference is ``method − baseline``. Over the ``n`` units:

* ``Δ``: the mean difference, with a ``confidence`` (0.95) interval from Student's t
  (``n − 1`` degrees of freedom; none for one unit);
* ``p (t)``: the two-sided paired t-test (none for one unit, or when every difference is equal);
* ``p (sign-flip)``: the two-sided paired permutation test: the share of the ``2^n`` sign
  assignments of the differences whose mean is at least as far from 0 as the observed one
  (exact up to ``n = 16``; above, 100,000 random assignments from ``seed``). It assumes no
  normality, and says plainly what few units allow: with 2 units it can never fall below 0.5,
  with 5 never below 0.0625;
* ``better``: in how many units the method beat the baseline (in the metric's direction: lower
  is better for sufficiency, deletion, the shortcut rate, sensitivity, the randomisation
  correlations, BG-gap and BG-follow; ties count as not better).

Per unit, splits where the metric is not finite are left out of the mean (as in the tables);
units where either method has no finite score (a diverged run, a metric not computed) are left
out and counted. p-values are not corrected for comparing several methods with one baseline
(Holm's correction: sort the ``k`` p-values, multiply the ``i``-th smallest by ``k − i + 1``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egl._check import fail

__all__ = ["PairedComparison", "paired_comparison", "comparison_table", "read_results", "sign_flip_p",
           "LOWER_IS_BETTER"]

#: Metrics where a lower score is better (the rest: higher is better).
LOWER_IS_BETTER = frozenset({"suff", "deletion", "shortcut", "max_sens", "avg_sens", "rand_top", "rand_all",
                             "bg_gap", "bg_follow"})
#: Above this many units the sign-flip test samples assignments instead of listing them all.
EXACT_UNITS = 16
_SAMPLED = 100_000
_OVER = ("ood", "id", "all")


@dataclass(frozen=True)
class PairedComparison:
    """One method against the baseline on one metric (scores as stored: fractions for accuracy)."""

    method: str
    baseline: str
    metric: str
    over: str
    n: int
    mean: float
    ci_low: float
    ci_high: float
    p_t: float
    p_sign_flip: float
    better: int
    skipped: int


def paired_comparison(rows: Sequence[dict[str, Any]], metric: str = "acc", *, baseline: str | None = None,
                      over: str = "ood", confidence: float = 0.95, seed: int = 0) -> list[PairedComparison]:
    """Every other method of ``rows`` against ``baseline``, paired by (training set, seed).

    Args:
        rows: result rows (``results.jsonl``'s, :func:`read_results`).
        metric: a metric of the rows (``acc``, ``worst_group``, ``shortcut``, ``energy``...).
        baseline: the method compared against (default: ``erm`` when present, else the first method).
        over: the test splits averaged per unit: ``"ood"`` (the run's out-of-distribution splits),
            ``"id"``, ``"all"``, or one split's name.
        confidence: of the interval on the mean difference, in (0, 1).
        seed: of the sampled sign-flip test (more than 16 units).

    Returns:
        One :class:`PairedComparison` per other method, in the rows' order (``n`` = 0 when no unit
        pairs up).
    """
    fn = "egl.experiments.paired_comparison"
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if len(methods) < 2:
        raise fail(fn, "rows", "results of at least two methods", f"{len(methods)} method(s): {methods}",
                   "Compare an experiment that trained a baseline and a method (e.g. erm and align)")
    splits = list(dict.fromkeys(r["split"] for r in rows))
    if over not in _OVER and over not in splits:
        raise fail(fn, "over", f"one of {list(_OVER)} or a test split of the rows {splits}", repr(over),
                   "Pass over='ood' (the default), 'id', 'all' or a split's name")
    if not isinstance(confidence, float) or not 0.0 < confidence < 1.0:
        raise fail(fn, "confidence", "a float in (0, 1)", repr(confidence), "Pass e.g. confidence=0.95")
    base = baseline if baseline is not None else ("erm" if "erm" in methods else methods[0])
    if base not in methods:
        raise fail(fn, "baseline", f"one of the rows' methods {methods}", repr(base), "Pass one of them")
    if not any(isinstance(r.get(metric), (int, float)) for r in rows):
        found = sorted({k for r in rows for k, v in r.items() if isinstance(v, float)})
        raise fail(fn, "metric", f"a metric of the rows {found}", repr(metric), "Pass one of them")
    scores = _unit_scores(rows, metric, over)
    return [_compare(m, base, metric, over, scores, confidence, seed) for m in methods if m != base]


def _selected(row: dict[str, Any], over: str) -> bool:
    if over == "all":
        return True
    if over in _OVER:
        return row.get("in_distribution") is (over == "id")
    return row["split"] == over


def _unit_scores(rows: Sequence[dict[str, Any]], metric: str, over: str) -> dict[str, dict[tuple, float]]:
    """method -> (train, seed) -> the metric's mean over the unit's selected splits where it is finite, as
    the tables take it (a split where it is undefined, the shortcut rate of a split with no conflicting
    sample, is left out; NaN when none is finite: a diverged run)."""
    values: dict[str, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if _selected(r, over):
            v = r.get(metric)
            values[r["method"]][(str(r["train"]), r["seed"])].append(float(v) if isinstance(v, (int, float))
                                                                    else math.nan)
    return {m: {u: (sum(f) / len(f) if (f := [x for x in v if math.isfinite(x)]) else math.nan)
                for u, v in units.items()}
            for m, units in values.items()}


def _compare(method: str, base: str, metric: str, over: str, scores: dict[str, dict[tuple, float]],
             confidence: float, seed: int) -> PairedComparison:
    mine, theirs = scores.get(method, {}), scores.get(base, {})
    units = [u for u in mine if u in theirs]
    diffs = np.array([mine[u] - theirs[u] for u in units if math.isfinite(mine[u]) and math.isfinite(theirs[u])])
    skipped = len(set(mine) | set(theirs)) - len(diffs)
    nan = math.nan
    if len(diffs) == 0:
        return PairedComparison(method, base, metric, over, 0, nan, nan, nan, nan, nan, 0, skipped)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    better = int((sign * diffs > 0).sum())
    mean = float(diffs.mean())
    low = high = p_t = nan
    if len(diffs) > 1:
        from scipy import stats

        sd = float(diffs.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
        low, high = mean - half, mean + half
        if sd > 0:
            p_t = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(len(diffs))), len(diffs) - 1))
    return PairedComparison(method, base, metric, over, len(diffs), mean, low, high, p_t,
                            sign_flip_p(diffs, seed=seed), better, skipped)


def sign_flip_p(diffs: np.ndarray, *, seed: int = 0) -> float:
    """Two-sided paired permutation p-value of the mean of ``diffs`` (see the module docstring)."""
    n = len(diffs)
    if n <= EXACT_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(_SAMPLED, n))
        signs[0] = 1.0  # the observed assignment counts (a valid p-value is never 0)
    means = np.abs(signs @ diffs) / n
    observed = abs(float(diffs.mean()))
    return float((means >= observed * (1 - 1e-9)).mean())  # (relative: rounding of the sums, any scale)


def comparison_table(rows: Sequence[dict[str, Any]], metric: str = "acc", *, baseline: str | None = None,
                     over: Sequence[str] = ("id", "ood"), confidence: float = 0.95, scale: float = 100.0,
                     seed: int = 0) -> str:
    """:func:`paired_comparison` as a Markdown table, one row per method and ``over`` entry
    (differences times ``scale``: percentage points for accuracy)."""
    from egl.experiments.tables import METRIC_NAMES

    name = METRIC_NAMES.get(metric, metric).replace(" ↓", "").replace(" ↑", "")
    head = (f"| Method | vs | Splits | Pairs | Δ {name} | {confidence:.0%} CI | p (paired t) | p (sign-flip) | "
            "Better in |")
    lines = [head, "|" + "---|" * 9]
    for o in over:
        for c in paired_comparison(rows, metric, baseline=baseline, over=o, confidence=confidence, seed=seed):
            if c.n == 0:
                lines.append(f"| {c.method} | {c.baseline} | {o} | 0 | – | – | – | – | – |")
                continue
            ci = "–" if math.isnan(c.ci_low) else f"[{c.ci_low * scale:+.1f}, {c.ci_high * scale:+.1f}]"
            p_t = "–" if math.isnan(c.p_t) else f"{c.p_t:.3f}"
            pairs = f"{c.n}" + (f" ({c.skipped} left out)" if c.skipped else "")
            lines.append(f"| {c.method} | {c.baseline} | {o} | {pairs} | {c.mean * scale:+.1f} | {ci} | {p_t} | "
                         f"{c.p_sign_flip:.3f} | {c.better}/{c.n} |")
    return "\n".join(lines)


def read_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The result rows of ``results.jsonl`` files (or the folders holding them), in order.

    Files are read as one experiment: a method's runs split over several files (more seeds run
    later into another folder) are merged. A run found in more than one file (the same method,
    training set and seed: two variants of one experiment) is told apart instead: that method's
    name is prefixed by its folder's name in every file (``box/align_gt``), so that the variants
    can be compared (they pair up when their training sets and seeds match).
    """
    fn = "egl compare"
    per_file: list[tuple[str, list[dict[str, Any]]]] = []
    for p in paths:
        path = Path(p)
        path = path / "results.jsonl" if path.is_dir() else path
        try:
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise fail(fn, "results", "results.jsonl files (or their folders) that egl experiment wrote",
                       f"{path}: {exc}", "Pass the --out folder of an experiment") from exc
        rows = [r for r in lines if "event" not in r and {"method", "train", "seed", "split"} <= set(r)]
        if not rows:
            raise fail(fn, "results", "a results.jsonl holding result rows", f"{path}: none",
                       "Pass the --out folder of a finished experiment")
        per_file.append((path.parent.name or str(path.parent), rows))
    runs: dict[tuple, int] = defaultdict(int)
    for _, rows in per_file:
        for run in {(r["method"], str(r["train"]), r["seed"]) for r in rows}:
            runs[run] += 1
    clash = {m for (m, _, _), count in runs.items() if count > 1}
    out: list[dict[str, Any]] = []
    for folder, rows in per_file:
        out += [{**r, "method": f"{folder}/{r['method']}"} if r["method"] in clash else r for r in rows]
    return out
