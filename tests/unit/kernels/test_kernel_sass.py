"""benchmarks/kernel_sass.py: the epilogue's kernels compiled for a GPU on this machine, counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from egl.kernels import triton_available

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(not triton_available(), reason="needs Triton (its bundled ptxas compiles for sm_90)")
def test_counts_every_launch_and_the_separable_write_is_leaner(tmp_path: Path) -> None:
    out = tmp_path / "sass.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernel_sass.py"), "--cases", "64:7", "--out", "32",
           "--dtypes", "bfloat16", "--json", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    by = {(r["config"], r["kernel"]): r for r in rows}
    sep, gather = by[("{}", "write_rows_kernel")], by[('{"write": "gather", "write_warps": 4}', "write_kernel")]
    assert sep["vector loads"] > 0 and sep["scalar loads"] <= 2  # only the two range values are scalar
    assert sep["instr/element"] < gather["instr/element"]
    reduce = by[("{}", "reduce_kernel")]
    assert reduce["instr/element"] > 0 and reduce["issue ceiling"] > 0


@pytest.mark.skipif(not triton_available(), reason="needs Triton (its bundled ptxas compiles for sm_90)")
def test_every_launch_compiles_for_sm90_at_odd_sizes(tmp_path: Path) -> None:
    """Odd channels (masked channel tiles), unaligned rows (clamped positions), an odd batch, a
    map wider than one position block, both write stages: every kernel builds for an H100/H200."""
    out = tmp_path / "sass.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernel_sass.py"), "--cases", "33:5,24:40", "--out", "48",
           "--dtypes", "float32,bfloat16", "--batch", "3", "--configs", '{};{"write": "gather"}', "--json", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"reduce_kernel", "stats_kernel", "write_rows_kernel", "write_kernel", "input_grads_kernel"}
    assert all(r["instructions"] > 0 for r in rows)
