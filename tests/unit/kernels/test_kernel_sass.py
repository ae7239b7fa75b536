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


def _sass_rows(tmp_path: Path, *args: str) -> list[dict]:
    """``benchmarks/kernel_sass.py ARGS`` in a subprocess (compiled, not interpreted): its JSON rows."""
    out = tmp_path / "sass.json"
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "kernel_sass.py"), *args, "--json", str(out)]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=300)
    return json.loads(out.read_text())["rows"]


@pytest.mark.skipif(not triton_available(), reason="needs Triton (its bundled ptxas compiles for sm_90)")
def test_counts_every_launch_and_the_separable_write_is_leaner(tmp_path: Path) -> None:
    rows = _sass_rows(tmp_path, "--cases", "64:7", "--out", "32", "--dtypes", "bfloat16", "--configs",
                      '{};{"write": "gather", "write_warps": 4};{"reduce": "dot"};{"reduce": "grouped"};'
                      '{"grads": "grouped"}')
    by = {(r["config"], r["kernel"]): r for r in rows}
    sep, gather = by[("{}", "write_rows_kernel")], by[('{"write": "gather", "write_warps": 4}', "write_kernel")]
    assert sep["vector loads"] > 0 and sep["scalar loads"] <= 2  # only the two range values are scalar
    assert sep["instr/element"] < gather["instr/element"]
    reduce = by[("{}", "reduce_kernel")]
    assert reduce["instr/element"] > 0 and reduce["issue ceiling"] > 0
    # bf16 7x7: one channel's row (98 bytes) is never 16-byte aligned, so the dot channel sum
    # loads 2 bytes at a time; rows of 8 channels (784 bytes) load as 16-byte vectors
    dot = by[('{"reduce": "dot"}', "reduce_dot_kernel")]
    grouped = by[('{"reduce": "grouped"}', "reduce_grouped_kernel")]
    assert dot["vector loads"] == 0 and dot["scalar loads"] > 0
    assert grouped["vector loads"] > 0 and grouped["scalar loads"] == 0
    assert grouped["instr/element"] < dot["instr/element"] / 2
    # the backward's one pass over the same rows: 16-byte loads too
    one, rows = by[("{}", "input_grads_kernel")], by[('{"grads": "grouped"}', "input_grads_grouped_kernel")]
    assert one["vector loads"] == 0 and rows["vector loads"] > 0 and rows["vector stores"] > 0


@pytest.mark.skipif(not triton_available(), reason="needs Triton (its bundled ptxas compiles for sm_90)")
def test_every_launch_compiles_for_sm90_at_odd_sizes(tmp_path: Path) -> None:
    """Odd channels (masked channel tiles), unaligned rows (clamped positions), an odd batch, a
    map wider than one position block, both write stages: every kernel builds for an H100/H200."""
    rows = _sass_rows(tmp_path, "--cases", "33:5,24:40", "--out", "48", "--dtypes", "float32,bfloat16", "--batch",
                      "3", "--configs", '{};{"write": "gather"}')
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"reduce_kernel", "stats_kernel", "write_rows_kernel", "write_kernel", "input_grads_kernel"}
    assert all(r["instructions"] > 0 for r in rows)


_BN_STATS_SASS = """
import sys
sys.path.insert(0, sys.argv[1])
import kernel_sass  # compiles real kernels (TRITON_INTERPRET=0)
import torch
from triton.runtime.jit import JITFunction
from egl.kernels import _bn_stats_triton
seen = []
JITFunction.run = lambda self, *a, grid=None, warmup=False, **kw: seen.append({"fn": self, "args": a, "kwargs": kw})
for dt, c in ((torch.bfloat16, 32), (torch.float32, 32), (torch.bfloat16, 33)):
    x = torch.randn(4, c, 9, 7).to(dt).contiguous(memory_format=torch.channels_last)
    _bn_stats_triton.partial_sums(x, 4096)
for launch in seen:
    body = kernel_sass.loop_body(kernel_sass.disassemble(launch, 90))
    print(sum("LDG.E.128" in s for s in body), len(body))
"""


@pytest.mark.skipif(not triton_available(), reason="needs Triton (its bundled ptxas compiles for sm_90)")
def test_the_batchnorm_statistics_kernel_compiles_for_sm90_with_vector_loads() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-c", _BN_STATS_SASS, str(ROOT / "benchmarks")], check=True, env=env,
                         capture_output=True, text=True, timeout=300)
    counts = [tuple(int(v) for v in line.split()) for line in res.stdout.split("\n") if line.strip()]
    assert len(counts) == 3 and all(n > 0 for _, n in counts)
    assert counts[0][0] > 0 and counts[1][0] > 0  # 32 channels: rows of 64 / 128 bytes, 16-byte loads


@pytest.mark.skipif(not triton_available(), reason="needs Triton (its bundled ptxas compiles for sm_90)")
def test_the_one_launch_forward_compiles_for_sm90(tmp_path: Path) -> None:
    """``fuse="on"``: the fused kernel (three phases and two barriers in one program) builds for an
    H100/H200 in bf16 and fp32, at a small map (the small-map tile) and a larger one."""
    rows = _sass_rows(tmp_path, "--cases", "64:7,32:14", "--out", "64", "--dtypes", "float32,bfloat16", "--batch",
                      "4", "--configs", '{"fuse": "on"}')
    fused = [r for r in rows if r["kernel"] == "fused_kernel"]
    assert len(fused) == 4 and all(r["instructions"] > 0 and r["vector stores"] > 0 for r in fused)


_ROW_KERNELS_SASS = """
import sys
sys.path.insert(0, sys.argv[1])
import kernel_sass  # compiles real kernels (TRITON_INTERPRET=0)
import torch
from triton.runtime.jit import JITFunction
from egl.kernels import _bn_backward_triton, _channel_affine_triton
seen = []
JITFunction.run = lambda self, *a, grid=None, warmup=False, **kw: seen.append({"fn": self, "args": a, "kwargs": kw})
for dt, c in ((torch.bfloat16, 32), (torch.float32, 33)):
    x = torch.randn(4, c, 9, 7).to(dt).contiguous(memory_format=torch.channels_last)
    f = torch.ones(c)
    for relu in (False, True):
        _channel_affine_triton.affine(x, f, f, 4096, relu, relu)
    _bn_backward_triton.partial_sums(x, x, f, 4096)
    _bn_backward_triton.input_grad(x, x, f, f, f, f, 4096)
for launch in seen:
    lines = kernel_sass.disassemble(launch, 90)
    print(launch["fn"].__name__, sum("LDG.E.128" in s for s in lines), sum("STG.E.128" in s for s in lines), len(lines))
"""


@pytest.mark.skipif(not triton_available(), reason="needs Triton (its bundled ptxas compiles for sm_90)")
def test_the_batchnorm_multiply_add_and_backward_kernels_compile_for_sm90() -> None:
    """``channel_affine`` (with and without its ReLU, in place) and ``bn_backward``'s two kernels
    build for an H100/H200 in bf16 (32 channels: 64-byte rows, 16-byte loads and stores) and
    float32 (33 channels: masked columns)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-c", _ROW_KERNELS_SASS, str(ROOT / "benchmarks")], check=True, env=env,
                         capture_output=True, text=True, timeout=300)
    rows = [line.split() for line in res.stdout.split("\n") if line.strip()]
    assert [r[0] for r in rows] == ["affine_kernel", "affine_kernel", "sums_kernel", "grad_kernel"] * 2
    assert all(int(r[3]) > 0 for r in rows)
    bf16 = rows[:4]
    assert all(int(r[1]) > 0 for r in bf16)  # every bf16 kernel loads 16 bytes at a time
    assert int(bf16[0][2]) > 0 and int(bf16[1][2]) > 0 and int(bf16[3][2]) > 0  # and stores so


_GRAD_LOW_SASS = """
import sys
sys.path.insert(0, sys.argv[1])
import kernel_sass  # compiles real kernels (TRITON_INTERPRET=0)
import torch
from triton.runtime.jit import JITFunction
from egl.kernels import _cam_triton_backward
seen = []
JITFunction.run = lambda self, *a, grid=None, warmup=False, **kw: seen.append({"fn": self, "args": a, "kwargs": kw})
for normalize in (True, False):
    low, stats, argext = torch.zeros(3, 35), torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.int32)
    _cam_triton_backward.grad_low(torch.zeros(3, 1, 50, 70), low, stats, argext, (5, 7), (50, 70), 1.0, True,
                                  normalize, 1e-6)
for launch in seen:
    print(launch["fn"].__name__, len(kernel_sass.disassemble(launch, 90)))
"""


@pytest.mark.skipif(not triton_available(), reason="needs Triton (its bundled ptxas compiles for sm_90)")
def test_the_backward_maps_kernels_compile_for_sm90() -> None:
    """The analytic backward's transposed upsampling (with the copy classes of the extremes' source
    pixels when normalising) and its finishing kernel build for an H100/H200."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-c", _GRAD_LOW_SASS, str(ROOT / "benchmarks")], check=True, env=env,
                         capture_output=True, text=True, timeout=300)
    rows = [line.split() for line in res.stdout.split("\n") if line.strip()]
    assert [r[0] for r in rows] == ["transpose_upsample", "finish"] * 2
    assert all(int(r[1]) > 0 for r in rows)
    assert int(rows[0][1]) > int(rows[2][1])  # the normalising variant does the class tests
