"""Random hyperparameter search with training-domain validation, DomainBed's protocol.

A method with a ``space`` (``methods.<m>.space: {lr: [loguniform, 1e-4, 1e-2], ...}``) is run
``sweep.n`` times: draw 0 with its configured ``kwargs`` (DomainBed's default hyperparameters
are its first draw too), draws 1 .. n-1 with values drawn from the space, which override
``kwargs``. Each draw is a method of the grid, named ``<m>@<draw>`` (its own runs, checkpoints
and result rows, which carry ``sweep_of`` and ``hparams``). Then, for each method, training
set and seed, the draw with the highest validation accuracy is kept (DomainBed's
``IIDAccuracySelectionMethod`` with ``train.val_domains=train``, its oracle with ``held_out``;
ties go to the lower draw) and the tables report the kept rows under the method's own name.

A space maps recipe keyword arguments (``lr`` and ``weight_decay`` included) to one of
``[loguniform, low, high]``, ``[uniform, low, high]``, ``[int, low, high]`` (both ends
included) or ``[choice, [a, b, ...]]``. Draws depend only on ``sweep.seed``, the method's name
and the draw's number: adding a method or a draw leaves the others' values as they were.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
import random
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import egl
from egl._check import check_int, fail
from egl.experiments.divergence import diverged_rows  # noqa: F401  (re-exported: it began here)

__all__ = ["DISTRIBUTIONS", "check_sweep", "expand", "draw", "diverged_rows", "origin", "select", "sweep_table",
           "keep_figure", "select_draws"]

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
_FN = "egl.experiments"


def _check_spec(method: str, key: str, spec: Any) -> None:
    where = f"methods.{method}.space.{key}"
    example = "[loguniform, 1e-4, 1e-2], [uniform, 0.05, 0.3], [int, 1, 4] or [choice, [16, 32]]"
    if not isinstance(spec, (list, tuple)) or not spec or spec[0] not in DISTRIBUTIONS:
        raise fail(_FN, where, f"a distribution: one of {list(DISTRIBUTIONS)} and its arguments", repr(spec)[:120],
                   f"Write e.g. {example}")
    kind = spec[0]
    if kind == "choice":
        if len(spec) != 2 or not isinstance(spec[1], (list, tuple)) or not spec[1]:
            raise fail(_FN, where, "[choice, [a, b, ...]] with at least one value", repr(spec)[:120],
                       "Write e.g. [choice, [16, 32]]")
        return
    ok = len(spec) == 3 and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                for v in spec[1:]) and spec[1] <= spec[2]
    if ok and kind == "loguniform":
        ok = spec[1] > 0
    if ok and kind == "int":
        ok = all(float(v).is_integer() for v in spec[1:])
    if not ok:
        need = {"loguniform": "two positive finite numbers low <= high",
                "uniform": "two finite numbers low <= high", "int": "two integers low <= high"}[kind]
        raise fail(_FN, where, f"[{kind}, low, high] with {need}", repr(spec)[:120], f"Write e.g. {example}")


def _parameters(recipe: str) -> Mapping[str, inspect.Parameter] | None:
    """The parameters of the registered recipe's signature (None where it cannot be read)."""
    try:
        return inspect.signature(egl.get_component("recipe", recipe)).parameters
    except (TypeError, ValueError):
        return None


def _defaults(recipe: str) -> dict[str, Any]:
    """The recipe's keyword defaults (empty where its signature cannot be read)."""
    params = _parameters(recipe) or {}
    return {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}


def _check_arguments(method: str, recipe: str, keys: list[str]) -> None:
    """Every key of a space is a keyword argument of the recipe (a misspelt one would fail at
    draw 1, after draw 0 has trained)."""
    params = _parameters(recipe)
    if params is None:  # no signature to read: the recipe checks its arguments itself
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "model"]
    for key in keys:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            raise fail(_FN, f"methods.{method}.space.{key}", f"an argument of recipe '{recipe}': one of {names}",
                       repr(key), f"Did you mean '{close[0]}'?" if close else "Remove it")


def check_sweep(cfg: dict[str, Any], selecting: bool = True) -> int:
    """``sweep.n`` and ``sweep.seed``, every method's ``space``, and (``selecting``: a grid that
    chooses among the draws) a validation split to select on; returns ``sweep.n``."""
    s = cfg.get("sweep") or {}
    n = check_int(s.get("n", 1), _FN, "sweep.n", low=1, note="(draws of each method with a space)",
                  fix="Set e.g. sweep.n=5 (draw 0 is the configured kwargs)")
    check_int(s.get("seed", 0), _FN, "sweep.seed", low=0, fix="Set e.g. sweep.seed=0")
    spaces = {m: spec.get("space") for m, spec in (cfg.get("methods") or {}).items() if spec.get("space")}
    for m, space in spaces.items():
        if not isinstance(space, dict):
            raise fail(_FN, f"methods.{m}.space", "a mapping of recipe arguments to distributions", repr(space)[:120],
                       "Write e.g. space: {lr: [loguniform, 1e-4, 1e-2]}")
        if "@" in m:
            raise fail(_FN, f"methods.{m}", "a method name without '@' (it names the draws: <method>@<draw>)",
                       repr(m), "Rename the method")
        for key, spec in space.items():
            _check_spec(m, str(key), spec)
        _check_arguments(m, cfg["methods"][m]["recipe"], list(space))
    t = cfg.get("train") or {}
    if selecting and n > 1 and spaces and t.get("select", "last") == "last" and t.get("val_every") is None:
        raise fail(_FN, "sweep.n", "validation to select the draws on (train.val_every=N or train.select=acc)",
                   f"sweep.n={n} with no validation", "Set train.val_every=N (the last measurement selects) or "
                   "train.select=acc (each run's best step)")
    return n


def draw(space: dict[str, Any], seed: int, method: str, index: int) -> dict[str, Any]:
    """Draw ``index`` of ``method``'s ``space`` (keys in sorted order, one generator per draw)."""
    rng = random.Random(zlib.crc32(f"{seed}/{method}/{index}".encode()))
    out: dict[str, Any] = {}
    for key in sorted(space):
        kind, *args = space[key]
        if kind == "loguniform":
            out[key] = math.exp(rng.uniform(math.log(args[0]), math.log(args[1])))
        elif kind == "uniform":
            out[key] = rng.uniform(args[0], args[1])
        elif kind == "int":
            out[key] = rng.randint(int(args[0]), int(args[1]))
        else:
            out[key] = copy.deepcopy(rng.choice(list(args[0])))
    return out


def expand(cfg: dict[str, Any], selecting: bool = True) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``cfg`` with each method that has a ``space`` replaced by its ``sweep.n`` draws
    (``<m>@0`` .. ``<m>@<n-1>``, each a plain method with ``kwargs``; others unchanged), and for
    each draw the fields its result rows carry: ``sweep_of`` (the method) and ``hparams`` (the
    space's keys with the values the draw trains with: draw 0's are its kwargs, else the
    recipe's defaults, and ``lr`` is ``train.lr`` unless the kwargs set one, as are ``optimizer`` and
    ``weight_decay`` where ``train`` sets them). ``selecting=False``
    (``egl train`` of one draw) needs no validation split."""
    n = check_sweep(cfg, selecting)
    seed = int((cfg.get("sweep") or {}).get("seed", 0))
    methods: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    t = cfg.get("train") or {}  # (a method without kwargs.lr trains at train.lr; so optimizer, weight_decay)
    fallback = {"lr": t.get("lr"), **{k: t[k] for k in ("optimizer", "weight_decay") if t.get(k) is not None}}
    for m, spec in cfg["methods"].items():
        space = spec.get("space")
        if not space:
            methods[m] = {k: v for k, v in spec.items() if k != "space"}
            continue
        for i in range(n):
            kwargs = {**(spec.get("kwargs") or {}), **({} if i == 0 else draw(space, seed, m, i))}
            methods[f"{m}@{i}"] = {"recipe": spec["recipe"], "kwargs": kwargs}
            known = {**_defaults(spec["recipe"]), **fallback, **kwargs}
            info[f"{m}@{i}"] = {"sweep_of": m, "hparams": {k: known.get(k) for k in sorted(space)}}
    out = dict(cfg)
    out["methods"] = methods
    return out, info


def origin(method: str) -> tuple[str, int | None]:
    """``"align@3"`` → ``("align", 3)``; a method that is not a draw → ``(method, None)``."""
    base, sep, index = method.rpartition("@")
    return (base, int(index)) if sep and index.isdigit() else (method, None)


def select(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows of the draw each (method, training set, seed) keeps, renamed to the method, and
    one record per choice (``method``, ``train``, ``seed``, ``draw``, ``val_acc``, and
    ``val_worst_group`` when the runs selected by it).

    The kept draw has the highest ``val_acc`` (the same for every split of a run), or the highest
    ``val_worst_group`` when the rows have it (``train.select=worst_group``); ties and missing
    values go to the lower draw. Rows of methods that are not draws pass unchanged."""
    runs: dict[tuple[str, str, Any], dict[int, list[dict[str, Any]]]] = defaultdict(dict)
    kept: list[dict[str, Any]] = []
    for r in rows:
        base, index = origin(r["method"])
        if index is None:
            kept.append(r)
        else:
            runs[(base, r["train"], r["seed"])].setdefault(index, []).append(r)
    choices = []
    for (base, train, seed), draws in runs.items():
        best = max(draws, key=lambda i: _score(draws[i], i))
        choice = {"method": base, "train": train, "seed": seed, "draw": best, "val_acc": draws[best][0].get("val_acc")}
        if "val_worst_group" in draws[best][0]:
            choice["val_worst_group"] = draws[best][0]["val_worst_group"]
        choices.append(choice)
        kept += [{**r, "method": base, "draw": best} for r in draws[best]]
    return kept, choices


def _score(rows: Sequence[dict[str, Any]], index: int) -> tuple[float, int]:
    """How :func:`select` ranks a draw: its validation worst-group accuracy when selected by it, else its
    validation accuracy (missing or NaN: lowest), then the lower draw."""
    key = "val_worst_group" if rows and "val_worst_group" in rows[0] else "val_acc"
    v = rows[0].get(key) if rows else None
    return (v if isinstance(v, (int, float)) and not math.isnan(v) else -math.inf, -index)


def keep_figure(keep: dict[str, Any], scores: dict[str, tuple[float, int]], method: str, model: Any,
                rows: Sequence[dict[str, Any]]) -> None:
    """Add the figures' model of run ``method`` (``rows``: that run's rows) to ``keep``; of a method's
    draws only the one :func:`select` would keep so far stays (``scores``: the kept draws' ranks),
    so a sweep holds one model per method in memory instead of one per draw."""
    base, index = origin(method)
    if index is None:
        keep[method] = model
        return
    score = _score(rows, index)
    rival = next((k for k in keep if origin(k)[0] == base and k in scores), None)
    if rival is not None:
        if scores[rival] >= score:
            return
        del keep[rival], scores[rival]
    keep[method], scores[method] = model, score


def _mean(values: list[float]) -> float:
    vals = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def sweep_table(rows: Sequence[dict[str, Any]], choices: Sequence[dict[str, Any]]) -> str:
    """Markdown: every draw's hyperparameters (its rows' ``hparams``), validation accuracy (and
    worst-group accuracy, when the runs selected by it) and in- / out-of-distribution accuracy
    (means over seeds and splits), and how many seeds kept it."""
    kept: dict[tuple[str, str, int], int] = defaultdict(int)
    for c in choices:
        kept[(c["method"], c["train"], c["draw"])] += 1
    by_run: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        base, index = origin(r["method"])
        if index is not None:
            by_run[(base, r["train"], index)].append(r)
    worst = any("val_worst_group" in r for r in rows)  # (train.select=worst_group: the draws kept by it)
    lines = ["| method | train | draw | hyperparameters | val acc |" + (" val worst group |" if worst else "")
             + " ID acc | OOD acc | kept (seeds) |",
             "|---|---|---|---|---|" + ("---|" if worst else "") + "---|---|---|"]

    def pct(v: float) -> str:
        return "–" if math.isnan(v) else f"{100 * v:.1f}"

    for (base, train, index), rs in sorted(by_run.items()):
        hp = ", ".join(f"{k}={_short(v)}" for k, v in (rs[0].get("hparams") or {}).items()) or "–"
        seeds = {r["seed"]: r.get("val_acc") for r in rs}
        by_seed = {r["seed"]: r.get("val_worst_group", math.nan) for r in rs}
        worst_cell = f" {pct(_mean(list(by_seed.values())))} |" if worst else ""
        ind = [r["acc"] for r in rs if r.get("in_distribution") is True]
        ood = [r["acc"] for r in rs if r.get("in_distribution") is False]
        note = (" (configured)" if index == 0 else "") + (", diverged" if any(r.get("diverged") for r in rs) else "")
        lines.append(f"| {base} | {train} | {index}{note} | {hp} | "
                     f"{pct(_mean(list(seeds.values())))} |{worst_cell} {pct(_mean(ind))} | {pct(_mean(ood))} | "
                     f"{kept[(base, train, index)]} of {len(seeds)} |")
    return "\n".join(lines)


def _short(v: Any) -> str:
    if v is None:
        return "default"
    return f"{v:.3g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


def select_draws(rows: list[dict[str, Any]], keep: dict[str, Any], source: Any,
                 out: Path) -> tuple[str, list[dict[str, Any]], dict[str, Any]]:
    """A sweep's tables (on the draws each method, training set and seed kept), those rows, and
    the figures' models (the kept draw of the first seed on the first training set); the
    choices are written to ``sweep.json``."""
    from egl.experiments.tables import render_tables

    kept, choices = select(rows)
    (out / "sweep.json").write_text(json.dumps(choices, indent=1, default=str), encoding="utf-8")
    first: dict[str, int] = {}
    for c in choices:  # in the grid's order: a method's first is its first seed's on the first training set
        first.setdefault(c["method"], c["draw"])
    figures = {}
    for name, recipe in keep.items():
        base, index = origin(name)
        if index is None or first.get(base) == index:
            figures[base] = recipe
    tables = render_tables(kept, source)
    tables += ("\n## Hyperparameter search (sweep.n draws a method; each method, training set and seed keeps the "
               "draw with the highest validation accuracy, and the tables above report it)\n\n"
               + sweep_table(rows, choices) + "\n")
    return tables, kept, figures
