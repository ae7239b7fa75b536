"""Where one training step spends its device time: torch.profiler's table for one recipe step.

    python benchmarks/profile_step.py --recipe align --device cuda --precision bf16 --batch 256 --size 224

Warms up for a few steps, then profiles one step: prints the wall time of the step, the phase
times (``egl.phase.*`` ranges that :meth:`egl.recipes.Recipe.training_step` records) and the
operators that took the most device (or CPU) time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, sync  # noqa: E402
from train_step import _step_fn  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", default="align")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--phase", default=None, help="profile one phase's loss + backward alone (e.g. masker)")
    p.add_argument("--shapes", action="store_true", help="one row per operator and input shapes")
    a = p.parse_args()
    fn = _step_fn(a.recipe, a.arch, a.batch, a.size, a.device, a.precision, a.channels_last, a.phase)
    for _ in range(3):
        fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    wall = time.perf_counter() - t
    acts = [torch.profiler.ProfilerActivity.CPU]
    if a.device.startswith("cuda"):
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts, record_shapes=a.shapes) as prof:
        fn()
        sync()
    key = "self_device_time_total" if a.device.startswith("cuda") else "self_cpu_time_total"
    what = f"'{a.recipe}' step" if a.phase is None else f"'{a.recipe}' {a.phase} phase (loss + backward)"
    print(f"# one {what} on {hardware()}: {a.arch} (os16), batch {a.batch} x {a.size}px, {a.precision}"
          f"{', channels-last' if a.channels_last else ''}: {1000 * wall:.1f} ms wall")
    events = prof.key_averages(group_by_input_shape=a.shapes)
    phases = [e for e in events if e.key.startswith("egl.phase.")]
    for e in phases:
        dev = getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0))
        print(f"  {e.key}: cpu {e.cpu_time_total / 1000:.1f} ms, device {dev / 1000:.1f} ms")
    print(events.table(sort_by=key, row_limit=a.rows, max_name_column_width=60,
                       max_shapes_column_width=90 if a.shapes else 80))


if __name__ == "__main__":
    main()
