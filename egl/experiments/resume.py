"""Resuming an interrupted experiment: which runs of a results folder are finished.

A run is one (method, training set, seed). ``egl experiment --resume --out DIR`` keeps the
rows of every run that was evaluated on every test split, trains the others again from their
last checkpoint (``DIR/checkpoints/<method>-<train>-s<seed>/last.pt``, bit-exact, see
``docs/training.md``), or from the start when a run has none. The folder's config must be the
one asked for: a resumed grid of another config would mix two experiments in one table.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from egl._check import fail
from egl.train.run_state import versions as _versions

__all__ = ["RunKey", "previous_rows", "config_differences", "write_log_start"]

RunKey = tuple[str, str, Any]  # (method, training set, seed)

#: Keys that may differ between a run and its resumption: where it writes, how it reports progress,
#: and what a divergence does (a grid stopped by one resumes with ``train.on_diverge=record``).
_FREE = {("output",), ("train", "progress"), ("train", "on_diverge")}


def _flat(cfg: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(cfg, dict) and path != ("methods",):
        out: dict[tuple[str, ...], Any] = {}
        for k, v in cfg.items():
            out.update(_flat(v, (*path, str(k))))
        return out
    return {path: json.loads(json.dumps(cfg, default=str))}


def _resolved(flat: dict[tuple[str, ...], Any], defaults: dict[tuple[str, ...], Any]) -> dict[tuple[str, ...], Any]:
    """``flat`` with ``train.channels_last`` as the bool ``fit`` resolves it to (a folder written
    when the default was ``False`` resumes under ``"auto"`` where both mean the same)."""
    from egl.train.loop import resolve_channels_last

    key = ("train", "channels_last")
    # a folder without the key is older than it and than train.precision (added together): fp32, so
    # "auto" resolves to False there, as the bool default of then did
    value = flat.get(key, defaults.get(key))
    if value not in (True, False, "auto"):
        return flat  # a bad value: compared as it is (fit names it)
    get = lambda k: flat.get(("train", k), defaults.get(("train", k)))  # noqa: E731
    flat = {**flat, key: resolve_channels_last(value, str(get("device")), str(get("precision")))}
    # model.normalize: a folder without the key is older than it (no normalisation); "auto" is
    # what it resolves to (timm's with weights, none without)
    from egl.experiments.models import resolved_normalize

    norm = ("model", "normalize")
    model_cfg = {"normalize": flat.get(norm, "none"), "weights": flat.get(("model", "weights"))}
    return {**flat, norm: resolved_normalize(model_cfg)}


def config_differences(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ (``methods`` compared whole), ignoring :data:`_FREE`; a key
    one side lacks counts as its default (a folder written before the key existed resumes)."""
    from egl.experiments.config import DEFAULTS

    d = _flat({k: v for k, v in DEFAULTS.items() if k != "methods"})
    a, b = _resolved(_flat(saved), d), _resolved(_flat(wanted), d)
    return [".".join(k) for k in sorted(set(a) | set(b))
            if k not in _FREE and a.get(k, d.get(k)) != b.get(k, d.get(k))]


def previous_rows(path: Path, cfg: dict[str, Any],
                  splits: list[str]) -> tuple[dict[str, Any], dict[RunKey, list[dict]]]:
    """The header and the finished runs' rows of ``path`` (a ``results.jsonl``).

    Raises:
        InputError: the file is not a results log, or it was written for another config.
    """
    fn = "egl experiment --resume"
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(fn, "--out", "a results folder whose results.jsonl egl wrote", f"{path}: {exc}",
                   "Point --out at the folder of the run to resume, or leave --resume out to start afresh") from exc
    if not lines or lines[0].get("event") != "start" or "config" not in lines[0]:
        raise fail(fn, "--out", "a results folder whose results.jsonl starts with egl's header", os.fspath(path),
                   "Point --out at the folder of the run to resume, or leave --resume out to start afresh")
    header = lines[0]
    differ = config_differences(header["config"], cfg)
    if differ:
        fix = "Resume with the same config and --set options, or write to another --out"
        if "train.channels_last" in differ and header["config"].get("train", {}).get("channels_last") is False:
            fix += (" (train.channels_last: add --set train.channels_last=false, the default before 'auto', which is "
                    "channels-last for bf16/fp16 on CUDA)")
        raise fail(fn, "config", f"the config of the run in {path.parent}", f"other values for {differ[:8]}", fix)
    runs: dict[RunKey, list[dict]] = {}
    for row in lines[1:]:
        if "event" not in row:
            runs.setdefault((row["method"], row["train"], row["seed"]), []).append(row)
    finished = {k: v for k, v in runs.items() if {r["split"] for r in v} >= set(splits)}
    return header, finished


def write_log_start(path: Path, header: dict[str, Any], finished: dict[Any, list[dict[str, Any]]],
                    splits: list[str]) -> None:
    """Write (atomically) the results log's header and, for a resumed grid, a ``resume`` line and
    the finished runs' rows, one per split in ``splits`` order (``finished`` is put in that order)."""
    lines = [header]
    if finished:
        lines.append({"event": "resume", "versions": _versions(), "time": time.time()})
        for key in finished:
            finished[key] = [next(r for r in finished[key] if r["split"] == split) for split in splits]
            lines += finished[key]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(line, default=str) + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)
