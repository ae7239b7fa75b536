"""Paired comparison of methods against a baseline: is the difference larger than the seeds' noise?

Two methods of one experiment are trained on the same training sets with the same seeds (the
seed fixes the data's draw and the model's initialisation), so their scores pair up: one pair
per ``(training set, seed)``, the *unit*. Per unit the score is the metric's mean over the
chosen test splits (the run's out-of-distribution splits, its in-distribution ones, all, or one
named split), and the difference is ``method − baseline``. Over the ``n`` units:

* ``Δ``: the mean difference, with a ``confidence`` (0.95) interval from Student's t
  (``n − 1`` degrees of freedom; none for one unit);
* ``p (t)``: the two-sided paired t-test (none for one unit, or when every difference is equal,
  to 1e-12 of the largest);
* ``p (sign-flip)``: the two-sided paired permutation test: the share of the ``2^n`` sign
  assignments of the differences whose mean is at least as far from 0 as the observed one
  (exact up to ``n = 16``; above, 100,000 random assignments from ``seed``). It assumes no
  normality, and says plainly what few units allow: with 2 units it can never fall below 0.5,
  with 5 never below 0.0625;
* ``better``: in how many units the method beat the baseline (in the metric's direction: lower
  is better for sufficiency, deletion, the shortcut rate, sensitivity, the randomisation
  correlations and BG-follow; ties count as not better; none for the metrics with no
  direction: the mask area, the share of dead maps, and BG-gap, which is signed).

Per unit, only splits where both methods' scores are finite enter the two means (a split where
the metric is undefined, the shortcut rate of a split with no conflicting sample, is left out of
both); units where no split is left (a diverged run, a metric not computed) are left out and
counted (``skipped``), as are the units only one of the two methods ran (``unpaired``, of those).

Comparing ``k`` methods with one baseline makes ``k`` tests: with ``adjust="holm"`` (the
default) both p-values are Holm's step-down adjustment over them (:func:`holm`; each kind of
p-value on its own, per metric and ``over``), which keeps the chance of any false "significant"
difference at the level read, for any dependence between the tests. With one method it changes
nothing; ``adjust="none"`` gives each test's own p-value.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import numbers
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from egl._check import fail

__all__ = ["PairedComparison", "paired_comparison", "comparison_table", "read_results", "sign_flip_p", "holm",
           "check_request", "LOWER_IS_BETTER", "ADJUSTMENTS"]

_FN = "egl.experiments.compare.paired_comparison"

#: Metrics where a lower score is better (the rest: higher is better).
LOWER_IS_BETTER = frozenset({"suff", "deletion", "shortcut", "max_sens", "avg_sens", "rand_top", "rand_all",
                             "bg_follow"})
#: Metrics with no better direction ("better" is not counted).
NO_DIRECTION = frozenset({"area", "rand_dead", "bg_gap"})
#: Row keys that are not metrics.
NOT_METRICS = frozenset({"seed", "n", "bg_n", "draw", "in_distribution"})
#: Above this many units the sign-flip test samples assignments instead of listing them all.
EXACT_UNITS = 16
_SAMPLED = 100_000
_OVER = ("ood", "id", "all")
#: The multiple-comparison adjustments of the p-values.
ADJUSTMENTS = ("holm", "none")


@dataclass(frozen=True)
class PairedComparison:
    """One method against the baseline on one metric (scores as stored: fractions for accuracy;
    ``p_t`` and ``p_sign_flip`` adjusted as ``adjust`` says)."""

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
    better: int | None
    skipped: int
    adjust: str = "none"
    unpaired: int = 0  # of the skipped: units of one method only (the other's run missing, or another grid)


def paired_comparison(rows: Sequence[dict[str, Any]], metric: str = "acc", *, baseline: str | None = None,
                      over: str = "ood", confidence: float = 0.95, seed: int = 0,
                      adjust: str = "holm") -> list[PairedComparison]:
    """Every other method of ``rows`` against ``baseline``, paired by (training set, seed).

    Args:
        rows: result rows (``results.jsonl``'s, :func:`read_results`).
        metric: a metric of the rows (``acc``, ``worst_group``, ``shortcut``, ``energy``...).
        baseline: the method compared against (default: ``erm`` when present, else the first method).
        over: the test splits averaged per unit: ``"ood"`` (the run's out-of-distribution splits),
            ``"id"``, ``"all"``, or one split's name.
        confidence: of the interval on the mean difference, in (0, 1).
        seed: of the sampled sign-flip test (more than 16 units).
        adjust: ``"holm"`` (Holm's adjustment over the methods compared) or ``"none"``.

    Returns:
        One :class:`PairedComparison` per other method, in the rows' order (``n`` = 0 when no unit
        pairs up).
    """
    base = check_request(rows, [metric], baseline, [over], confidence, adjust=adjust)
    found = [_compare(m, base, metric, over, rows, confidence, seed)
             for m in dict.fromkeys(r["method"] for r in rows) if m != base]
    if adjust == "none":
        return found
    p_t, p_flip = holm([c.p_t for c in found]), holm([c.p_sign_flip for c in found])
    return [dataclasses.replace(c, p_t=t, p_sign_flip=f, adjust=adjust) for c, t, f in zip(found, p_t, p_flip)]


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of ``k`` p-values, in their order: sort them, take the ``i``-th
    smallest times ``k − i + 1`` (capped at 1), and keep the running maximum so that the order is
    kept. Rejecting where the adjusted value is below ``α`` keeps the chance of any false rejection
    at most ``α``, whatever the tests' dependence (Holm, 1979).

    A p-value that is NaN (a test that could not be made: one unit, equal differences) stays NaN
    and does not count in ``k``.
    """
    values = [float(p) for p in p_values]
    if any(not math.isnan(p) and not 0.0 <= p <= 1.0 for p in values):
        raise fail("egl.experiments.compare.holm", "p_values", "p-values in [0, 1] (or NaN for no test)",
                   repr(values), "Pass the tests' p-values")
    order = sorted((i for i, p in enumerate(values) if not math.isnan(p)), key=lambda i: values[i])
    out, running = list(values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * values[i]))
        out[i] = running
    return out


def _is_value(v: object) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_request(rows: Sequence[dict[str, Any]], metrics: Sequence[str], baseline: str | None,
                  overs: Sequence[str], confidence: float, *, fn: str = _FN,
                  arg: Any = lambda name: name, adjust: str = "holm") -> str:
    """Check a comparison's arguments against ``rows`` and return the baseline (``arg`` spells an
    argument's name as the caller takes it: ``--over`` for the command line)."""
    def bad(name: str, want: str, got: str, fix: str) -> Exception:
        return fail(fn, arg(name), want, got, fix)

    methods = list(dict.fromkeys(r["method"] for r in rows))
    if len(methods) < 2:
        raise bad("rows", "results of at least two methods", f"{len(methods)} method(s): {methods}",
                  "Compare an experiment that trained a baseline and a method (e.g. erm and align)")
    splits = list(dict.fromkeys(r["split"] for r in rows))
    flagged = any("in_distribution" in r for r in rows)
    for over in overs:
        if over not in _OVER and over not in splits:
            raise bad("over", f"one of {list(_OVER)} or a test split of the rows {splits}", repr(over),
                      "Pass ood, id, all or a split's name")
        if over in ("id", "ood") and not flagged:
            raise bad("over", "rows that say which splits are in distribution (written by egl experiment)",
                      f"{over!r}, with no row saying so", "Pass all, or a split's name")
    if isinstance(confidence, bool) or not isinstance(confidence, float) or not 0.0 < confidence < 1.0:
        raise bad("confidence", "a float in (0, 1)", repr(confidence), "Pass e.g. 0.95")
    if adjust not in ADJUSTMENTS:
        raise bad("adjust", f"one of {list(ADJUSTMENTS)}", repr(adjust), "Pass holm (or none for unadjusted p-values)")
    erms = [m for m in methods if m == "erm" or m.endswith("/erm")]
    if baseline is None and len(erms) > 1:
        raise bad("baseline", "the method to compare against (several are named erm)", f"none, with {erms}",
                  "Name one of them")
    base = baseline if baseline is not None else (erms[0] if erms else methods[0])
    if base not in methods:
        raise bad("baseline", f"one of the rows' methods {methods}", repr(base), "Pass one of them")
    found = sorted({k for r in rows for k, v in r.items() if _is_value(v) and k not in NOT_METRICS})
    for metric in metrics:
        if metric not in found:
            raise bad("metric", f"a metric of the rows {found}", repr(metric), "Pass one of them")
    return base


def _selected(row: dict[str, Any], over: str) -> bool:
    if over == "all":
        return True
    if over in _OVER:
        return row.get("in_distribution") is (over == "id")
    return row["split"] == over


def _split_scores(rows: Sequence[dict[str, Any]], method: str, metric: str,
                  over: str) -> dict[tuple, dict[str, float]]:
    """(train, seed) -> split -> the method's finite score there, for the selected splits."""
    out: dict[tuple, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["method"] == method and _selected(r, over):
            v = r.get(metric)
            unit = out[(str(r["train"]), r["seed"])]  # (a unit with no finite split: counted, left out)
            if _is_value(v) and math.isfinite(float(v)):
                unit[r["split"]] = float(v)
    return out


def _compare(method: str, base: str, metric: str, over: str, rows: Sequence[dict[str, Any]],
             confidence: float, seed: int) -> PairedComparison:
    mine, theirs = _split_scores(rows, method, metric, over), _split_scores(rows, base, metric, over)
    diffs_list = []
    for unit in mine.keys() & theirs.keys():
        both = sorted(mine[unit].keys() & theirs[unit].keys())  # the splits where both are finite
        if both:
            diffs_list.append(sum(mine[unit][k] - theirs[unit][k] for k in both) / len(both))
    diffs = np.array(diffs_list)
    skipped = len(mine.keys() | theirs.keys()) - len(diffs)
    unpaired = len(mine.keys() ^ theirs.keys())
    nan = math.nan
    if len(diffs) == 0:
        return PairedComparison(method, base, metric, over, 0, nan, nan, nan, nan, nan, None, skipped,
                                unpaired=unpaired)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    better = None if metric in NO_DIRECTION else int((sign * diffs > 0).sum())
    mean = float(diffs.mean())
    low = high = p_t = nan
    if len(diffs) > 1:
        from scipy import stats

        sd = float(diffs.std(ddof=1))
        if sd <= 1e-12 * float(np.abs(diffs).max()):  # equal differences (rounding aside): no t statistic
            sd = 0.0
        half = float(stats.t.ppf(0.5 + confidence / 2, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
        low, high = mean - half, mean + half
        if sd > 0:
            p_t = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(len(diffs))), len(diffs) - 1))
    return PairedComparison(method, base, metric, over, len(diffs), mean, low, high, p_t,
                            sign_flip_p(diffs, seed=seed), better, skipped, unpaired=unpaired)


def sign_flip_p(diffs: np.ndarray, *, seed: int = 0) -> float:
    """Two-sided paired permutation p-value of the mean of ``diffs`` (see the module docstring).

    Shape:
        diffs: ``n`` finite values, ``n >= 1``."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim != 1 or diffs.size == 0 or not np.isfinite(diffs).all():
        raise fail(f"{_FN.rpartition('.')[0]}.sign_flip_p", "diffs", "a non-empty 1-D array of finite differences",
                   f"shape {diffs.shape}" + ("" if np.isfinite(diffs).all() else " with values that are not finite"),
                   "Pass the paired differences, one per unit")
    n = len(diffs)
    if n <= EXACT_UNITS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(_SAMPLED, n))
        signs[0] = 1.0  # the observed assignment counts (a valid p-value is never 0)
    means = np.abs(signs @ diffs) / n
    observed = abs(float(diffs.mean()))
    tolerance = 1e-9 * float(np.abs(diffs).mean())  # (the sums' rounding grows with the values, at any scale)
    return float((means >= observed - tolerance).mean())


def comparison_table(rows: Sequence[dict[str, Any]], metric: str = "acc", *, baseline: str | None = None,
                     over: Sequence[str] = ("id", "ood"), confidence: float = 0.95, scale: float = 100.0,
                     seed: int = 0, adjust: str = "holm") -> str:
    """:func:`paired_comparison` as a Markdown table, one row per method and ``over`` entry
    (differences times ``scale``: percentage points for accuracy; the p-value columns say when
    they are Holm-adjusted, over the methods of one ``over`` entry)."""
    from egl.experiments.tables import METRIC_NAMES

    name = METRIC_NAMES.get(metric, metric).replace(" ↓", "").replace(" ↑", "")
    how = ", Holm" if adjust == "holm" else ""
    head = (f"| Method | vs | Splits | Pairs | Δ {name} | {confidence * 100:g}% CI | p (paired t{how}) | "
            f"p (sign-flip{how}) | Better in |")
    lines = [head, "|" + "---|" * 9]
    for o in dict.fromkeys(over):
        for c in paired_comparison(rows, metric, baseline=baseline, over=o, confidence=confidence, seed=seed,
                                   adjust=adjust):
            gaps = [f"{k} {what}" for k, what in ((c.unpaired, "unpaired"), (c.skipped - c.unpaired, "undefined")) if k]
            pairs = f"{c.n}" + (f" ({', '.join(gaps)})" if gaps else "")
            if c.n == 0:
                lines.append(f"| {c.method} | {c.baseline} | {o} | {pairs} | – | – | – | – | – |")
                continue
            ci = "–" if math.isnan(c.ci_low) else f"[{c.ci_low * scale:+.1f}, {c.ci_high * scale:+.1f}]"
            p_t = "–" if math.isnan(c.p_t) else "<0.001" if c.p_t < 0.001 else f"{c.p_t:.3f}"
            better = "–" if c.better is None else f"{c.better}/{c.n}"
            lines.append(f"| {c.method} | {c.baseline} | {o} | {pairs} | {c.mean * scale:+.1f} | {ci} | {p_t} | "
                         f"{c.p_sign_flip:.3f} | {better} |")
    return "\n".join(lines)


def read_results(paths: Sequence[str | Path], *, fn: str = "egl.experiments.compare.read_results",
                 arg: str = "paths") -> list[dict[str, Any]]:
    """The result rows of ``results.jsonl`` files (or the folders holding them), in order.

    A hyperparameter search's rows (``align@3``: every draw) are reduced to the draw each run
    keeps, as ``tables.md`` does (:func:`egl.experiments.sweep.select`). Files are read as one
    experiment: a method's runs split over several files (more seeds run later into another
    folder) are merged. A run found in more than one file (the same method, training set and
    seed: two variants of one experiment) is told apart instead: that method's name is prefixed
    by the file's shortest distinguishing name in every file, its folder's for a ``results.jsonl``
    (``box/align_gt``), so that the variants can be compared (they pair up when their training
    sets and seeds match).

    Args:
        paths: the files, or the folders holding a ``results.jsonl``.
        fn, arg: named in errors (the command line's ``egl compare`` and ``results``).
    """
    from egl.experiments.sweep import origin, select

    per_file: list[tuple[Path, list[dict[str, Any]]]] = []
    configs: list[tuple[Path, dict[str, Any]]] = []
    for p in paths:
        path = Path(p)
        path = path / "results.jsonl" if path.is_dir() else path
        try:
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise fail(fn, arg, "results.jsonl files (or their folders) that egl experiment wrote",
                       f"{path}: {exc}", "Pass the --out folder of an experiment") from exc
        rows = [r for r in lines if isinstance(r, dict) and "event" not in r
                and {"method", "train", "seed", "split"} <= set(r)]
        if not rows:
            raise fail(fn, arg, "a results.jsonl holding result rows", f"{path}: none",
                       "Pass the --out folder of a finished experiment")
        if any(origin(r["method"])[1] is not None for r in rows):
            rows = select(rows)[0]
        per_file.append((path, rows))
        config = next((r.get("config") for r in lines if isinstance(r, dict) and r.get("event") == "start"), None)
        if isinstance(config, dict):
            configs.append((path, config))
    _warn_if_configs_differ(configs, fn)
    runs: dict[tuple, int] = defaultdict(int)
    for _, rows in per_file:
        for run in {(r["method"], str(r["train"]), r["seed"]) for r in rows}:
            runs[run] += 1
    clash = {m for (m, _, _), count in runs.items() if count > 1}
    labels = _labels([path for path, _ in per_file], fn, arg) if clash else {}
    out: list[dict[str, Any]] = []
    for path, rows in per_file:
        out += [{**r, "method": f"{labels[path]}/{r['method']}"} if r["method"] in clash else r for r in rows]
    return out


#: Settings that do not change what an experiment measures (where and how fast it ran).
_SAME_RESULTS = frozenset({"train.seeds", "methods", "train.device", "data.root", "data.num_workers",
                           "eval.batch_size", "train.checkpoint_every", "train.progress", "output"})


def _warn_if_configs_differ(configs: list[tuple[Path, dict[str, Any]]], fn: str) -> None:
    """Warn when the files' experiments were run with other settings (seeds and the methods each
    ran aside; a method that two files both ran, with other settings, is named): their rows are
    paired as one experiment, so a difference of method may be one of budget or data too."""
    from egl.experiments.resume import config_differences

    if len(configs) < 2:
        return
    (first, ref), notes = configs[0], []
    for path, cfg in configs[1:]:
        keys = [k for k in config_differences(ref, cfg) if k not in _SAME_RESULTS]
        mine, theirs = ref.get("methods") or {}, cfg.get("methods") or {}
        keys += [f"methods.{m}" for m in mine if m in theirs and mine[m] != theirs[m]]
        if keys:
            notes.append(f"{path} differs from {first} in {', '.join(keys[:8])}" + (" ..." if len(keys) > 8 else ""))
    if notes:
        warnings.warn(f"{fn}: the results were run with other settings: {'; '.join(notes)}. Their rows are paired "
                      "as one experiment: a difference between their methods is also one of these settings.",
                      UserWarning, stacklevel=3)


def _labels(paths: Sequence[Path], fn: str, arg: str) -> dict[Path, str]:
    """Each file's shortest distinguishing name: its folders' trailing parts, and its stem unless it
    is ``results.jsonl``; the same file twice is refused."""
    resolved = [p.resolve() for p in paths]
    if len(set(resolved)) < len(resolved):
        twice = next(p for p in paths if resolved.count(p.resolve()) > 1)
        raise fail(fn, arg, "each results file once", f"{twice} more than once", "Pass each folder once")
    parts = {p: [*r.parent.parts, *([] if r.name == "results.jsonl" else [r.stem])] for p, r in zip(paths, resolved)}
    for k in range(1, max(len(v) for v in parts.values()) + 1):
        names = {p: "/".join(v[-k:]) for p, v in parts.items()}
        if len(set(names.values())) == len(names):
            return names
    return {p: str(r) for p, r in zip(paths, resolved)}
