"""Result rows to Markdown tables: mean ± std over seeds, one row per (method, training domains).

A row of results is a dict with ``method``, ``train``, ``seed``, ``split``, optionally
``in_distribution`` (the split is drawn from a training domain of the run) and the metrics.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from egl._check import fail

__all__ = ["pivot", "summary_table", "heldout_table", "render_tables", "METRIC_NAMES"]

METRIC_NAMES = {
    "val_acc": "Val acc", "val_worst_group": "Val worst group", "acc": "Acc", "worst_group": "Worst group",
    "auc": "AUC", "suff": "Suff ↓",
    "comp": "Comp ↑", "deletion": "Del ↓", "insertion": "Ins ↑", "shortcut": "Shortcut ↓",
    "energy": "EPG", "area": "Mask area", "pointing": "Pointing", "iou": "IoU",
    "max_sens": "MaxSens ↓", "avg_sens": "AvgSens ↓", "rand_top": "Rand-top ρ ↓", "rand_all": "Rand-all ρ ↓",
    "rand_dead": "Rand-all dead", "bg_fg": "Only-FG", "bg_same": "Mixed-same", "bg_rand": "Mixed-rand",
    "bg_gap": "BG-gap", "bg_follow": "BG-follow ↓",
}


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _fmt(values: list[float], scale: float) -> str:
    vals = _finite(values)
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean * scale:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean * scale:.1f} ± {std * scale:.1f}"


def _split_means(rows: Sequence[dict[str, Any]], metric: str) -> dict[tuple[str, str], list[float]]:
    """(method, train) -> one value per seed: the metric's mean over that seed's splits (NaN skipped).

    The spread over seeds is then that of the averaged score, not of the splits."""
    per_seed: dict[tuple[str, str], dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        per_seed[(r["method"], r["train"])][r["seed"]].append(float(r.get(metric, math.nan)))
    out: dict[tuple[str, str], list[float]] = {}
    for key, seeds in per_seed.items():
        out[key] = [sum(v) / len(v) if (v := _finite(vals)) else math.nan for vals in seeds.values()]
    return out


def pivot(rows: Sequence[dict[str, Any]], metric: str, *, splits: Sequence[str] | None = None,
          scale: float = 100.0, mark_in_distribution: bool = False) -> str:
    """Rows (method, train) × columns (test split) of one metric, as Markdown.

    With ``mark_in_distribution`` the cells of a row's in-distribution splits are in italics and
    two columns follow: the mean over the row's in-distribution (ID) and out-of-distribution
    (OOD) splits, per seed, then mean ± std over seeds.
    """
    splits = list(splits) if splits is not None else list(dict.fromkeys(r["split"] for r in rows))
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    in_dist: set[tuple[str, str, str]] = set()
    for r in rows:
        cells[(r["method"], r["train"])][r["split"]].append(float(r.get(metric, math.nan)))
        if r.get("in_distribution") is True:
            in_dist.add((r["method"], r["train"], r["split"]))
    extra = ["ID", "OOD"] if mark_in_distribution else []
    means = {kind: _split_means([r for r in rows if r.get("in_distribution") is kind], metric)
             for kind in (True, False)} if mark_in_distribution else {}
    head = f"| method | trained on | {' | '.join([*splits, *extra])} |"
    lines = [head, "|" + "---|" * (len(splits) + len(extra) + 2)]
    for (method, train), per_split in cells.items():
        out = []
        for s in splits:
            text = _fmt(per_split.get(s, []), scale)
            marked = mark_in_distribution and (method, train, s) in in_dist and text != "–"
            out.append(f"*{text}*" if marked else text)
        out += [_fmt(means[kind].get((method, train), []), scale) for kind in (True, False) if extra]
        lines.append(f"| {method} | {train} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def summary_table(rows: Sequence[dict[str, Any]], metrics: Sequence[str] | str | None = None,
                  legacy_metrics: Sequence[str] | None = None, *, split: str | None = None,
                  scale: float = 100.0) -> str:
    """Rows (method, train) × columns (metrics), each the mean over the rows' splits per seed, then
    mean ± std over seeds; pass the rows of the splits to average (e.g. the in-distribution ones).

    The first releases took ``summary_table(rows, split, metrics)`` (one split's rows): that form
    still works, with a ``DeprecationWarning``; pass ``[r for r in rows if r["split"] == split]``."""
    if split is not None:  # the first form by keyword: summary_table(rows, split=..., metrics=...)
        metrics, legacy_metrics = split, metrics
    elif legacy_metrics is not None and not isinstance(metrics, str):
        raise fail("egl.experiments.tables.summary_table", "legacy_metrics", "nothing after a list of metrics",
                   repr(legacy_metrics), "Pass the metrics as one list: summary_table(rows, ['acc', 'auc'])")
    if metrics is None or (isinstance(metrics, str) and legacy_metrics is None):
        raise fail("egl.experiments.tables.summary_table", "metrics", "a list of metric names (e.g. ['acc', 'auc'])",
                   repr(metrics), "Pass summary_table(rows, ['acc']) with the rows to average")
    if isinstance(metrics, str):
        import warnings

        warnings.warn("egl.experiments.tables.summary_table(rows, split, metrics) is deprecated: pass the split's "
                      "rows, summary_table([r for r in rows if r['split'] == split], metrics)", DeprecationWarning,
                      stacklevel=2)
        rows, metrics = [r for r in rows if r["split"] == metrics], legacy_metrics
    per_metric = {m: _split_means(rows, m) for m in metrics}
    keys = list(dict.fromkeys((r["method"], r["train"]) for r in rows))
    head = f"| method | trained on | {' | '.join(METRIC_NAMES.get(m, m) for m in metrics)} |"
    lines = [head, "|" + "---|" * (len(metrics) + 2)]
    for method, train in keys:
        lines.append(f"| {method} | {train} | "
                     + " | ".join(_fmt(per_metric[m][(method, train)], scale) for m in metrics) + " |")
    return "\n".join(lines)


def heldout_table(rows: Sequence[dict[str, Any]], metric: str = "acc", *, scale: float = 100.0) -> str | None:
    """DomainBed's table: one row per method, one column per held-out test split, then ``Avg``.

    Defined when every run (method, training set) has exactly one out-of-distribution split
    and a method's runs hold out different splits (``train.domains=loo``; ``each`` with two
    domains); otherwise ``None``. ``Avg`` is the mean over the held-out splits per seed, then
    mean ± std over seeds (DomainBed averages the per-domain means: equal for the mean).
    """
    ood = [r for r in rows if r.get("in_distribution") is False]
    held: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in ood:
        held[(r["method"], r["train"])].add(r["split"])
    runs = {(r["method"], r["train"]) for r in rows}
    if not ood or any(len(held.get(run, ())) != 1 for run in runs):
        return None
    splits = list(dict.fromkeys(r["split"] for r in ood))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        mine = [next(iter(held[run])) for run in runs if run[0] == m]
        if len(mine) < 2 or len(set(mine)) != len(mine):
            return None
    cells: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    per_seed: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in ood:
        value = float(r.get(metric, math.nan))
        cells[r["method"]][r["split"]].append(value)
        per_seed[r["method"]][r["seed"]].append(value)
    lines = [f"| method | {' | '.join(splits)} | Avg |", "|" + "---|" * (len(splits) + 2)]
    for m in methods:
        avg = [sum(v) / len(v) if len(v := _finite(vals)) == len(splits) else math.nan
               for vals in per_seed[m].values()]
        lines.append(f"| {m} | " + " | ".join(_fmt(cells[m].get(s, []), scale) for s in splits)
                     + f" | {_fmt(avg, scale)} |")
    return "\n".join(lines)


def render_tables(rows: list[dict[str, Any]], source: Any) -> str:
    """The Markdown tables of an experiment."""
    from egl.experiments.divergence import diverged_note

    splits = list(dict.fromkeys(r["split"] for r in rows))
    has = {k for r in rows for k, v in r.items() if isinstance(v, float) and not math.isnan(v)}
    kinds = [k for k in (True, False) if any(r.get("in_distribution") is k for r in rows)]
    parts = ["## Accuracy (%) per test split (out-of-distribution matrix)", "",
             pivot(rows, "acc", splits=splits, mark_in_distribution=True), "",
             "*Italics*: the split is drawn from a training domain of the row (in distribution); "
             "ID / OOD: the mean over the row's in-distribution / out-of-distribution splits."
             + (" **No split here is out of distribution**: every test split is of a training domain "
                "(train.domains=each or loo tests on held-out domains)." if kinds == [True] else "")]
    # DomainBed's table reads the held-out *domain*: splits of no domain (the synthetic benchmark's
    # random, flipped, novel) are out of distribution for every run and would hide it
    of_domains = getattr(source, "split_domains", None)
    held = heldout_table([r for r in rows if r["split"] in of_domains] if of_domains else rows, "acc")
    if held is not None:
        parts += ["", "## Accuracy (%) on the held-out domain (DomainBed's table: one column per domain left out)",
                  "", held]
    if "shortcut" in has:
        parts += ["", "## Shortcut rate (%): predictions that follow the background, among conflicting samples",
                  "", pivot(rows, "shortcut", splits=splits)]
    metrics = [m for m in ("val_acc", "val_worst_group", "acc", "worst_group", "auc", "suff", "comp", "deletion",
                           "insertion", "shortcut", "energy", "area", "iou", "max_sens", "avg_sens", "rand_top",
                           "rand_all", "rand_dead", "bg_fg", "bg_same", "bg_rand", "bg_gap", "bg_follow")
               if m in has]
    for kind in kinds:
        title = "In distribution" if kind else "Out of distribution"
        sel = [r for r in rows if r.get("in_distribution") is kind]
        parts += ["", f"## {title}: accuracy, AUC, faithfulness and localisation (mean over the row's "
                  f"{'in' if kind else 'out-of'}-distribution splits)", "", summary_table(sel, metrics)]
    if not kinds:  # rows that do not say which splits are in distribution (written by hand, or by older egl)
        parts += ["", "## Every test split: accuracy, AUC, faithfulness and localisation (mean over the splits)",
                  "", summary_table(rows, metrics)]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    if len(methods) > 1:
        from egl.experiments.compare import comparison_table

        over = [o for o, k in (("id", True), ("ood", False)) if k in kinds] or ["all"]
        base = "erm" if "erm" in methods else methods[0]
        parts += ["", f"## Against {base}: accuracy differences paired by training set and seed", "",
                  comparison_table(rows, "acc", baseline=base, over=over), "",
                  "Δ: the method's accuracy minus the baseline's (percentage points), per (training set, seed), "
                  "then averaged; CI: Student's t over those pairs; p (sign-flip): exact permutation test of the "
                  "pairs' signs, which cannot fall below 0.5 with 2 pairs or 0.0625 with 5; both p-values "
                  "Holm-adjusted over the methods compared with the baseline. Other metrics and baselines: "
                  "`egl compare <results folder> --metric M --baseline B` (docs/experiments.md)."]
    note = diverged_note(rows)
    if note:
        parts += ["", note]
    parts += ["", "Suff: ERASER sufficiency (lower is better); Comp: comprehensiveness (higher is better); "
              + ("Del / Ins: RISE deletion / insertion areas (lower / higher is better); " if "deletion" in has else "")
              + ("MaxSens / AvgSens: largest / mean relative change (%) of the maps under small input noise "
                 "(lower is more stable); " if "max_sens" in has else "")
              + ("Rand-top / Rand-all: Spearman correlation (x100) of the maps with those of the model with "
                 "its top block / every block re-initialised (lower: the maps read the weights), over images "
                 "whose map is not constant; Rand-all dead: share (%) of them whose map is constant once every "
                 "block is; "
                 if "rand_top" in has else "")
              + ("Only-FG / Mixed-same / Mixed-rand: accuracy with the object on a blank background / on the "
                 "background of another image of its class / of another class (Xiao et al.); BG-gap: Mixed-same "
                 "minus Mixed-rand over the images that have both (near 0: the background adds nothing); BG-follow: "
                 "share of Mixed-rand predictions that are the background's class; "
                 if "bg_gap" in has else "")
              + "EPG: share of Grad-CAM energy inside the ground-truth mask, to read against the mask's area. "
              + "Localisation alone is not evidence of right reasons: read it beside accuracy and shortcut rate."]
    return "\n".join(parts) + "\n"
