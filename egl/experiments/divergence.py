"""Runs whose training diverged (:class:`egl.recipes.NonFiniteLossError`): stop, or record and go on.

A sweep's draw that diverges is always recorded (draws far out in a space, a large learning
rate, do diverge, and selection passes them over). A method of its own stops the grid by
default (``train.on_diverge: stop``): a diverging configured method is a finding to look at.
With ``train.on_diverge: record`` it is recorded like a draw and the grid goes on; the key may
change on ``--resume``, so a grid stopped by a divergence continues when its command is run again
with ``--resume --out DIR --set train.on_diverge=record`` (the error says so), and the diverged
run is not trained again by later resumptions.

A recorded run has one row per test split with NaN accuracy and validation accuracy and the
error under ``diverged``. The tables' means skip NaN, so :func:`diverged_note` lists the runs
they leave out.
"""

from __future__ import annotations

import json
import math
from typing import Any

from egl._check import fail

__all__ = ["ON_DIVERGE", "check_on_diverge", "diverged_rows", "diverged_note"]

#: ``train.on_diverge``'s values.
ON_DIVERGE = ("stop", "record")


def check_on_diverge(value: Any) -> str:
    """``train.on_diverge``, checked before any folder is made."""
    if value not in ON_DIVERGE:
        raise fail("egl.experiments", "train.on_diverge", "'stop' or 'record'", repr(value),
                   "Set train.on_diverge=record to record a diverging run and go on, or stop (the default)")
    return str(value)


def diverged_rows(run: Any, source: Any, splits: list[str], extra: dict[str, Any], err: Exception, log: Any,
                  echo: bool) -> list[dict[str, Any]]:
    """One row per split with NaN accuracy and validation accuracy and the error under
    ``diverged``, written to ``log`` (so that ``--resume`` does not train the run again)."""
    if echo:
        print(f"[egl] {run.method} on {run.train}, seed {run.seed} diverged, recorded as such: {err}", flush=True)
    rows = []
    for split in splits:
        row = {"method": run.method, "train": run.train, "seed": run.seed, "split": split,
               "in_distribution": source.in_distribution(split, run.domains), **extra,
               "diverged": str(err), "val_acc": math.nan, "acc": math.nan}
        log.write(json.dumps(row, default=str) + "\n")
        rows.append(row)
    log.flush()
    return rows


def diverged_note(rows: list[dict[str, Any]]) -> str | None:
    """A line naming the diverged runs among ``rows`` (left out of every mean), or None."""
    runs = dict.fromkeys((r["method"], r["train"], r["seed"]) for r in rows if r.get("diverged"))
    if not runs:
        return None
    named = "; ".join(f"{m} on {t}, seed {s}" for m, t, s in runs)
    return (f"**Diverged** (a loss term became NaN or infinite; left out of every mean above, their cells "
            f"read – where no seed is left): {named}. Their errors are in results.jsonl (`diverged`).")
