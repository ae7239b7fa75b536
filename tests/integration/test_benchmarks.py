"""Every benchmark script runs end to end at a tiny size and prints what it promises.

The benchmarks are outside the timed test run (their numbers are never asserted: the machines
are shared); this only keeps the scripts working as the library changes. Each runs in its own
process, as a user runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
pytestmark = pytest.mark.slow


def run(script: str, *args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=BENCH.parent, env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_flops_benchmark_splits_align_into_its_phases(tmp_path: Path) -> None:
    run("flops.py", "--batch", "1", "--size", "32", "--only", "erm,align,irm", "--top", "3",
        "--json", str(tmp_path / "f.json"))
    out = json.loads((tmp_path / "f.json").read_text())
    rows = {r["recipe"]: r for r in out["rows"]}
    assert rows["erm"]["flops x erm"] == 1.0 and rows["irm"]["flops x erm"] == 1.0  # IRM's penalty adds no product
    phases = dict(p.split() for p in rows["align"]["per phase (GFLOP / image)"].split(", "))
    assert set(phases) == {"masker", "classifier"}
    assert abs(sum(map(float, phases.values())) - rows["align"]["GFLOP / image"]) < 0.02  # (2-decimal rounding)
    assert 3.0 < rows["align"]["flops x erm"] < 4.5  # two passes in each phase, plus the masker
    assert rows["align"]["roofline x erm"] > 2  # (at 32 px the optimiser's per-step traffic weighs on both)
    assert set(dict(p.split() for p in rows["align"]["per phase (roofline us / image)"].split(", "))) == set(phases)
    assert len(out["top"]) == 3 and sum(t["roofline share"] for t in out["top"]) < 1


def test_kernel_sweep_only_compares_each_configuration_with_the_default(tmp_path: Path) -> None:
    """gpu.sh's kernel_fuse_batch stage, under the Triton interpreter on the CPU."""
    run("kernel.py", "--smoke", "--batch", "2", "--out", "16", "--cases", "8:3", "--sweep-only",
        "--configs", '{};{"fuse": "off"}', "--json", str(tmp_path / "k.json"), env={"TRITON_INTERPRET": "1"})
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    assert {r["variant"] for r in rows} == {"triton forward() default", "triton fuse=off"}  # the sweep alone
    assert all(r["max diff vs default"] < 1e-6 and r["same positions"] for r in rows)


def test_saliency_benchmark(tmp_path: Path) -> None:
    out = run("saliency.py", "--models", "resnet18", "--settings", "2x32", "--repeats", "1", "--no-memory",
              "--json", str(tmp_path / "s.json"))
    assert "egl vs captum max rel. diff" in out
    rows = {r["variant"]: r for r in json.loads((tmp_path / "s.json").read_text())["results"]}
    assert {"forward", "egl", "egl_autograd", "captum"} <= set(rows)
    assert rows["forward"]["x forward"] == 1.0 and rows["egl"]["ms"] > 0


def test_train_step_benchmark(tmp_path: Path) -> None:
    run("train_step.py", "--batch", "2", "--size", "32", "--repeats", "1", "--only", "erm,align",
        "--json", str(tmp_path / "t.json"))
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "t.json").read_text())["rows"]}
    assert set(rows) == {"erm", "align"}
    assert rows["erm"]["x erm"] == 1.0 and rows["align"]["x erm"] > 0 and rows["align"]["peak MB"] > 0


@pytest.mark.parametrize("script,args,expect", [
    ("metrics.py", ["--quick", "--batch", "2", "--size", "32", "--steps", "4"], "egl deletion + insertion"),
    ("sanity.py", ["--quick", "--batch", "2", "--size", "32", "--samples", "2"], "egl parameter_randomization"),
    ("activations.py", ["--batch", "2", "--size", "32"], "masker"),
    ("masker_ops.py", ["--batch", "2", "--size", "32", "--repeats", "1"], "bn_stats"),
    ("profile_step.py", ["--recipe", "align", "--batch", "2", "--size", "32", "--rows", "3"], "egl.phase.masker"),
    ("profile_saliency.py", ["--batch", "2", "--size", "32", "--rows", "3"], "copies and host reads"),
    ("kernel.py", ["--batch", "2", "--cases", "1"], "kernel"),
    ("sync_check.py", ["--batch", "2", "--size", "32", "--only", "grad_cam,step: align", "--run-on-cpu"],
     "host-device synchronisations"),
    ("input_grads.py", ["--batch", "2", "--size", "32", "--models", "resnet18", "--repeats", "1"], "sub-pixel"),
    ("gpu_checks.py", ["--smoke"], "correctness of the device defaults"),
    ("alignment_precision.py", ["--settings", "64:32", "--seeds", "1", "--batch", "2"], "2x2"),
    ("train_step.py", ["--batch", "2", "--size", "32", "--repeats", "1", "--only", "align-nativebn-nativedgrad"],
     "align-nativebn-nativedgrad"),
])
def test_benchmark_script_runs(script: str, args: list[str], expect: str) -> None:
    assert expect in run(script, *args)


def test_cam_variants_benchmark(tmp_path: Path) -> None:
    run("cam_variants.py", "--batch", "2", "--size", "32", "--repeats", "1", "--cams", "grad_cam,grad_cam_plus_plus",
        "--json", str(tmp_path / "v.json"))
    rows = json.loads((tmp_path / "v.json").read_text())["rows"]
    assert [(r["layer"], r["cam"]) for r in rows] == [("last", "grad_cam"), ("last", "grad_cam_plus_plus"),
                                                       ("layer3", "grad_cam"), ("layer3", "grad_cam_plus_plus")]
    assert all(r["egl ms"] > 0 and r["x forward"] > 0 and r["align step x ERM"] > 0 for r in rows)


def test_gradient_free_benchmark(tmp_path: Path) -> None:
    run("gradient_free.py", "--batch", "1", "--size", "32", "--repeats", "1", "--layers", "layer3",
        "--json", str(tmp_path / "g.json"))
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    assert [(r["layer"], r["cam"]) for r in rows] == [("layer3", "eigen_cam"), ("layer3", "score_cam")]
    assert all(r["egl ms"] > 0 and r["floor ms"] > 0 and r["x floor"] > 0 for r in rows)


def test_road_benchmark(tmp_path: Path) -> None:
    run("road.py", "--batch", "1", "--sizes", "16", "--fractions", "50", "--repeats", "1",
        "--json", str(tmp_path / "r.json"))
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [(r["size"], r["removed %"]) for r in rows] == [(16, 50.0)]
    assert rows[0]["egl ms"] > 0 and rows[0]["ms/img"] > 0
    if "max diff" in rows[0]:  # (pytorch-grad-cam installed: the same system solved)
        assert rows[0]["max diff"] < 1e-4
