"""Shared helpers of the benchmarks: timing (median of round-robin repeats), peak memory, tables."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def hardware() -> str:
    """One line naming the machine, for labelling results."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}, torch {torch.__version__}"


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def round_robin(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                inner: int = 1) -> dict[str, float]:
    """Median seconds per call of every variant, timed in interleaved rounds (fair under drift).

    Each round times ``inner`` back-to-back calls of a variant (one synchronisation before and
    after) and records their mean: the steady state of a loop of calls. On a GPU, where a small
    call is bound by the host launching kernels, a single call right after another variant's
    (say, a peer that copies to the host) runs with cold host caches and can read slower than
    the same call in a loop."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            sync()
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            sync()
            times[name].append((time.perf_counter() - t) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def _status_mb(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MB; NaN off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _hwm_mb() -> float:
    return _status_mb("VmHWM")


def peak_memory_mb(fn: Callable[[], Any]) -> tuple[float, float]:
    """(peak above the starting point, memory still held after the call and a GC), in MB.

    GPU: ``torch.cuda.max_memory_allocated``. CPU (Linux): the process's resident-set high-water
    mark, reset through ``/proc/self/clear_refs`` just before the call.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        gc.collect()
        return peak / 2**20, (torch.cuda.memory_allocated() - base) / 2**20
    base = _rss_mb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    out = fn()
    peak = _hwm_mb() - base
    del out
    gc.collect()
    return peak, _rss_mb() - base


def run_isolated(script: str, args: list[str]) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process; it prints one JSON line last."""
    res = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": (res.stderr or res.stdout).strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def report(title: str, rows: list[dict[str, Any]], cols: list[str], json_path: str | None) -> None:
    """Print ``# title`` and the table of ``rows``; with ``json_path``, also write them there as
    ``{"hardware", "rows"}``."""
    print(f"# {title}")
    print(table(rows, cols))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"hardware": hardware(), "rows": rows}, f, indent=1)


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """A plain-text table."""
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols), "  ".join("-" * widths[c] for c in cols)]
    lines += ["  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return "" if v is None else str(v)
