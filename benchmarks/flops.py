"""Arithmetic and memory traffic of one training step of every recipe, as ratios to ERM: floors.

    python benchmarks/flops.py                          # resnet18 (output_stride 16), 224 px, bf16
    python benchmarks/flops.py --arch resnet50 --json flops.json

Runs the very steps ``train_step.py`` times, on the CPU at batches ``--batch`` and twice that,
under ``--precision`` autocast, counts every operator dispatched, and reports the counts of a
step at ``--report-batch`` images (default 256, as the GPU table), extrapolated linearly: a
per-image part (the passes) and a per-step part (the optimiser's update, the weights' casts):

* **FLOPs** of the matrix products and convolutions, forward and backward (PyTorch's formulas in
  ``torch.utils.flop_counter``). A step cannot take less time relative to ERM than its FLOP
  ratio unless it does less arithmetic than the method defines.
* **Bytes** each operator reads and writes, as if nothing stayed in cache (inputs + outputs;
  views move nothing, an in-place operator reads and writes its tensor, a broadcast input counts
  its storage once): the traffic of an implementation that runs one kernel per operator, as
  eager PyTorch does.
* **Roofline**: each operator's time as the larger of its FLOPs at ``--peak-tflops`` and its bytes
  at ``--bandwidth-gbs`` (H200 defaults: 989 dense bf16 TFLOP/s, 4275 GB/s measured copy
  bandwidth), summed. Its ratio to ERM's is what a per-operator implementation running every
  kernel at the card's peak would show; only fusing operators goes below it.

Issue 5's "ALIGN <= 3.5x ERM" is read against the ``align`` row here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, table  # noqa: E402
from train_step import _step_fn, names  # noqa: E402

aten = torch.ops.aten


_ALLOCATIONS = {aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided}


def _bytes(t: Tensor) -> int:
    """Bytes a kernel touches in ``t``: its elements, or its storage when broadcast (smaller)."""
    return min(t.numel(), t.untyped_storage().nbytes() // max(t.element_size(), 1)) * t.element_size()


class Counter(TorchDispatchMode):
    """FLOPs, bytes and roofline seconds of every operator dispatched inside the block.
    (``FlopCounterMode`` itself tracks modules with backward hooks, which ``torch.autograd.grad``
    on a leaf, Grad-CAM inside a loss, refuses.)"""

    def __init__(self, peak_flops: float, bandwidth: float) -> None:
        super().__init__()
        self.flops = 0
        self.bytes = 0
        self.seconds = 0.0
        self.peak, self.bandwidth = peak_flops, bandwidth
        self.by_op: dict[str, list[float]] = {}  # operator -> [calls, FLOPs, bytes, roofline seconds]

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        returns = func._schema.returns
        aliased = bool(returns) and returns[0].alias_info is not None
        if (aliased and not returns[0].alias_info.is_write) or func._overloadpacket in _ALLOCATIONS:
            moved = 0  # a view, or memory allocated and not written
        else:
            moved = sum(_bytes(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor))
            moved += sum(_bytes(t) for t in tree_leaves(out) if isinstance(t, Tensor))
        seconds = max(flops / self.peak, moved / self.bandwidth)
        self.flops += flops
        self.bytes += moved
        self.seconds += seconds
        entry = self.by_op.setdefault(str(func._overloadpacket), [0, 0, 0, 0.0])
        for i, v in enumerate((1, flops, moved, seconds)):
            entry[i] += v
        return out


def measure(fn: Any, peak_flops: float, bandwidth: float) -> Counter:
    """The counts of one call of ``fn`` (after one uncounted call: lazy initialisations)."""
    fn()
    with Counter(peak_flops, bandwidth) as counter:
        fn()
    return counter


def phases(name: str) -> list[str]:
    """The phases of recipe ``name``'s step, in order (one for most)."""
    from train_step import _recipe, split_suffixes

    return list(_recipe(split_suffixes(name)[0], "resnet18").configure_optimizers())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=2, help="measured at this batch and twice it")
    p.add_argument("--report-batch", type=int, default=256, help="the step the counts are reported for")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16", help="autocast, as the GPU runs")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense tensor-core TFLOP/s (H200 bf16: 989)")
    p.add_argument("--bandwidth-gbs", type=float, default=4275.0, help="copy bandwidth (H200, measured: 4275)")
    p.add_argument("--only", default=None, help="comma list of recipes (default: all of train_step.py's)")
    p.add_argument("--top", type=int, default=12, help="operators listed for --top-of (by roofline time)")
    p.add_argument("--top-of", default="align:masker", help="recipe[:phase] whose operators are listed ('' none)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    peak, bw = a.peak_tflops * 1e12, a.bandwidth_gbs * 1e9
    n = a.report_batch

    def at_report_batch(name: str, phase: str | None = None) -> tuple[float, float, float]:
        """(FLOPs, bytes, roofline seconds) per image of a step of ``n`` images: measured at two
        batches, split into a per-image and a per-step part."""
        one, two = (measure(_step_fn(name, a.arch, b, a.size, precision=a.precision, phase=phase), peak, bw)
                    for b in (a.batch, 2 * a.batch))
        out = []
        for x1, x2 in ((one.flops, two.flops), (one.bytes, two.bytes), (one.seconds, two.seconds)):
            per_image = (x2 - x1) / a.batch
            out.append((x1 - a.batch * per_image) / n + per_image)
        return out[0], out[1], out[2]

    rows: list[dict[str, Any]] = []
    for name in (a.only.split(",") if a.only else names()):
        flops, moved, seconds = at_report_batch(name)
        row: dict[str, Any] = {"recipe": name, "GFLOP / image": flops / 1e9, "GB / image": moved / 1e9,
                               "roofline us / image": 1e6 * seconds, "_flops": flops, "_seconds": seconds}
        steps = phases(name)
        if len(steps) > 1:
            parts = {ph: at_report_batch(name, ph) for ph in steps}
            row["per phase (GFLOP / image)"] = ", ".join(f"{ph} {pc[0] / 1e9:.2f}" for ph, pc in parts.items())
            row["per phase (roofline us / image)"] = ", ".join(f"{ph} {1e6 * pc[2]:.1f}" for ph, pc in parts.items())
        rows.append(row)
    erm = next(((r["_flops"], r["_seconds"]) for r in rows if r["recipe"] == "erm"), None)
    for row in rows:
        flops, seconds = row.pop("_flops"), row.pop("_seconds")
        row["flops x erm"] = flops / erm[0] if erm else None
        row["roofline x erm"] = seconds / erm[1] if erm else None
    print(f"# training-step floors on {hardware()}: {a.arch} (output_stride 16), {a.size} px, {a.precision} "
          f"autocast, a step of {n} images (measured at {a.batch} and {2 * a.batch}); roofline at "
          f"{a.peak_tflops:g} TFLOP/s and {a.bandwidth_gbs:g} GB/s, one kernel per operator")
    print(table(rows, ["recipe", "GFLOP / image", "flops x erm", "GB / image", "roofline us / image",
                       "roofline x erm", "per phase (GFLOP / image)", "per phase (roofline us / image)"]))
    top: list[dict[str, Any]] = []
    if a.top_of:
        name, _, phase = a.top_of.partition(":")
        c = measure(_step_fn(name, a.arch, 2 * a.batch, a.size, precision=a.precision, phase=phase or None), peak, bw)
        for op, (calls, flops, moved, seconds) in sorted(c.by_op.items(), key=lambda kv: -kv[1][3])[:a.top]:
            top.append({"operator": op, "calls": int(calls), "GFLOP": flops / 1e9, "MB": moved / 1e6,
                        "roofline share": seconds / c.seconds})
        print(f"\n# {a.top_of} at batch {2 * a.batch}: the operators with the most roofline time")
        print(table(top, ["operator", "calls", "GFLOP", "MB", "roofline share"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"hardware": hardware(), "arch": a.arch, "size": a.size, "precision": a.precision,
                       "report_batch": n, "top_of": a.top_of, "top": top,
                       "peak_tflops": a.peak_tflops, "bandwidth_gbs": a.bandwidth_gbs, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
