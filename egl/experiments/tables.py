"""Result rows to Markdown tables: mean ± std over seeds, one row per (method, training domains)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

__all__ = ["pivot", "summary_table", "METRIC_NAMES"]

METRIC_NAMES = {
    "acc": "Acc", "auc": "AUC", "suff": "Suff ↓", "comp": "Comp ↑", "shortcut": "Shortcut ↓",
    "energy": "EPG", "area": "Mask area", "pointing": "Pointing", "iou": "IoU",
}


def _fmt(values: list[float], scale: float) -> str:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "–"
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return f"{mean * scale:.1f}"
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean * scale:.1f} ± {std * scale:.1f}"


def pivot(rows: Sequence[dict[str, Any]], metric: str, *, splits: Sequence[str] | None = None,
          scale: float = 100.0) -> str:
    """Rows (method, train) × columns (test split) of one metric, as Markdown."""
    splits = list(splits) if splits is not None else list(dict.fromkeys(r["split"] for r in rows))
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        cells[(r["method"], r["train"])][r["split"]].append(float(r.get(metric, math.nan)))
    head = f"| method | trained on | {' | '.join(splits)} |"
    lines = [head, "|" + "---|" * (len(splits) + 2)]
    for (method, train), per_split in cells.items():
        lines.append(f"| {method} | {train} | " + " | ".join(_fmt(per_split.get(s, []), scale) for s in splits) + " |")
    return "\n".join(lines)


def summary_table(rows: Sequence[dict[str, Any]], split: str, metrics: Sequence[str], *, scale: float = 100.0) -> str:
    """Rows (method, train) × columns (metrics) on one test split, as Markdown."""
    sel = [r for r in rows if r["split"] == split]
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in sel:
        for m in metrics:
            cells[(r["method"], r["train"])][m].append(float(r.get(m, math.nan)))
    head = f"| method | trained on | {' | '.join(METRIC_NAMES.get(m, m) for m in metrics)} |"
    lines = [head, "|" + "---|" * (len(metrics) + 2)]
    for (method, train), per_metric in cells.items():
        lines.append(f"| {method} | {train} | " + " | ".join(_fmt(per_metric[m], scale) for m in metrics) + " |")
    return "\n".join(lines)
