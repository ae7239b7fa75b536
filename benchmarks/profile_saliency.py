"""Where one ``grad_cam`` call spends its host and device time, beside a ``no_grad`` forward.

    python benchmarks/profile_saliency.py --model resnet18 --batch 32 --size 224

Prints the wall time of both (median of 20 synchronised calls; egl with the targets as a device
tensor, whose range it reads at the end of the call, and as a Python list, checked on the host), then torch.profiler's table of
one egl call sorted by host (CPU) time: on a GPU a small model's forward is bound by the
host launching kernels, so what egl adds there is host work or a wait on the device.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, sync  # noqa: E402
from saliency import _inputs, variants  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--rows", type=int, default=25)
    a = p.parse_args()
    model, x, y = _inputs(a.model, a.batch, a.size)
    fns = variants(a.model, model, x, y)
    from egl.explainers import GradCAM

    cam, y_list = GradCAM(model), y.tolist()
    fns["egl, list targets"] = lambda: cam(x, y_list)
    timed = ["forward", "egl", "egl, list targets"]
    if x.is_cuda:  # the call replayed as one CUDA graph (captured by the first of its timed calls)
        from egl.explainers import GraphedExplainer

        graphed = GraphedExplainer(GradCAM(model))
        fns["egl, CUDA graph"] = lambda: graphed(x, y_list)
        timed.append("egl, CUDA graph")
    walls = {}
    for name in timed:
        ts = []
        for i in range(25):
            sync()
            t = time.perf_counter()
            fns[name]()
            sync()
            if i >= 5:
                ts.append(time.perf_counter() - t)
        walls[name] = statistics.median(ts)
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        fns["egl"]()
        sync()
    print(f"# one grad_cam call on {hardware()}: {a.model}, batch {a.batch} x {a.size}px: "
          f"forward {1000 * walls['forward']:.2f} ms, egl {1000 * walls['egl']:.2f} ms, egl with list targets "
          f"{1000 * walls['egl, list targets']:.2f} ms wall"
          + (f", egl replayed as a CUDA graph {1000 * walls['egl, CUDA graph']:.2f} ms" if x.is_cuda else ""))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=a.rows, max_name_column_width=60))
    print("# copies and host reads in one egl call (operator, tensors, the egl or benchmark line that made it):")
    for line in copies(fns["egl"]):
        print(line)


def copies(fn: Callable[[], Any]) -> list[str]:
    """Every copy and scalar read that ``fn`` dispatches, with the shapes and devices involved and the
    innermost egl (or benchmark) line on the Python stack."""
    from torch.utils._python_dispatch import TorchDispatchMode

    found: list[str] = []

    def where() -> str:
        for frame in reversed(traceback.extract_stack()[:-3]):
            if "/egl/" in frame.filename or "/benchmarks/" in frame.filename:
                return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} " \
                       f"{(frame.line or '').strip()[:80]}"
        return "?"

    def desc(v: Any) -> str:
        return f"{list(v.shape)} {v.dtype} {v.device}" if isinstance(v, torch.Tensor) else repr(v)[:40]

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            name = str(func)
            if any(k in name for k in ("_to_copy", "copy_", "_local_scalar_dense", "nonzero", "item")):
                dst = desc(out) if isinstance(out, torch.Tensor) else ""
                found.append(f"  {name}: {desc(args[0])} -> {dst}  at {where()}")
            return out

    with Log():
        fn()
    sync()
    return found


if __name__ == "__main__":
    main()
