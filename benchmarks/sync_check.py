"""The host-device synchronisations of egl's calls that PyTorch's sync debug mode flags: explainers,
the faithfulness metric, and one training step of every recipe, each with the egl line that made
it (CUDA only; ``--run-on-cpu`` runs the calls without counting).

    python benchmarks/sync_check.py                          # resnet18, batch 8 x 64 px, bf16 steps
    python benchmarks/sync_check.py --batch 32 --size 224 --json syncs.json

Each call runs once to warm up (lazy initialisation, cuDNN autotuning), then once under
``torch.cuda.set_sync_debug_mode("warn")``: PyTorch warns at every call that waits for the
device (a read of a device value, a blocking copy; not driver-level stalls such as an allocation
or the staging of a large pageable copy, which it cannot see). Some are by design: a training step reads
its loss values once per phase (the value checks), and an explainer given its targets as a
device tensor reads their range once, at the end of the call. Any other is a stall to remove: the
host waits for the queued work, then the device idles while the host queues the next.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, report, sync  # noqa: E402


def _where() -> str:
    """The innermost egl line on the stack (else the innermost benchmark line)."""
    import egl

    stack = traceback.extract_stack()[:-3]
    for folder in (os.path.dirname(egl.__file__), os.path.dirname(os.path.abspath(__file__))):
        for frame in reversed(stack):
            path = os.path.abspath(frame.filename)
            if path.startswith(folder + os.sep) and not path.endswith("sync_check.py"):
                name = "/".join(path.rsplit(os.sep, 2)[-2:])
                return f"{name}:{frame.lineno} {(frame.line or '').strip()[:70]}"
    return "?"


def syncs(fn: Callable[[], Any]) -> list[str] | None:
    """Where ``fn`` synchronised with the device (``None`` off CUDA: not detectable there)."""
    fn()  # warm-up
    sync()
    if not torch.cuda.is_available():
        fn()
        return None
    found: list[str] = []
    shown = warnings.showwarning

    def record(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if "synchronizing" in str(message):
            found.append(_where())
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=".*synchroniz")  # every one, not once per line
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
            warnings.showwarning = shown
    sync()
    return found


def calls(batch: int, size: int, precision: str, only: list[str] | None = None) -> dict[str, Callable[[], Any]]:
    from saliency import _inputs
    from train_step import _step_fn, names

    from egl.explainers import GradCAM, GraphedExplainer, input_gradient
    from egl.metrics import faithfulness

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model, x, y = _inputs("resnet18", batch, size)
    cam, ys, y_cpu = GradCAM(model), y.tolist(), y.cpu()
    sal = cam(x, y)
    graphed = GraphedExplainer(GradCAM(model))
    graphed(x, ys)  # captured here (a capture synchronises): the calls counted are replays
    out: dict[str, Callable[[], Any]] = {
        "grad_cam, targets a device tensor": lambda: cam(x, y),
        "grad_cam, targets a list": lambda: cam(x, ys),
        "grad_cam, targets a CPU tensor": lambda: cam(x, y_cpu),
        "grad_cam, one int target": lambda: cam(x, 3),
        "grad_cam, predicted class": lambda: cam(x),
        "grad_cam replayed (GraphedExplainer), targets a list": lambda: graphed(x, ys),
        "input_gradient, targets a list": lambda: input_gradient(model, x, ys),
        "faithfulness": lambda: faithfulness(model, x, sal, target=y),
    }
    for name in [n for n in names() if n != "align-keep"]:
        if not only or any(s in f"step: {name}" for s in only):  # (each builds a model)
            out[f"step: {name}"] = _step_fn(name, "resnet18", batch, size, dev, precision if dev == "cuda" else "fp32")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"], help="training steps (CUDA)")
    p.add_argument("--only", default=None, help="comma list of call names (substring match)")
    p.add_argument("--run-on-cpu", action="store_true", help="without CUDA, run the calls anyway (nothing is counted)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available() and not a.run_on_cpu:
        print("sync check skipped: no CUDA device (--run-on-cpu runs the calls without counting)")
        return
    rows = []
    only = a.only.split(",") if a.only else None
    for name, fn in calls(a.batch, a.size, a.precision, only).items():
        if only and not any(s in name for s in only):
            continue
        found = syncs(fn)
        rows.append({"call": name, "syncs": "n/a" if found is None else len(found),
                     "where": "" if not found else "; ".join(f"{n}x {w}" if n > 1 else w
                                                           for w, n in Counter(found).items())})
        print(f"{name}: {rows[-1]['syncs']}", flush=True)
    print()
    report(f"host-device synchronisations on {hardware()}: resnet18, batch {a.batch} x {a.size} px"
           + ("" if torch.cuda.is_available() else " (CPU: not detectable, the calls ran)"),
           rows, ["call", "syncs", "where"], a.json)


if __name__ == "__main__":
    main()
