"""Arithmetic of one training step of every recipe, as ratios to ERM: the floor of a time ratio.

    python benchmarks/flops.py                          # resnet18 (output_stride 16), 224 px
    python benchmarks/flops.py --arch resnet50 --json flops.json

Counts the floating-point operations of matrix products and convolutions, forward and backward
(PyTorch's formulas in ``torch.utils.flop_counter``), of the very steps ``train_step.py`` times, on the
CPU at batch ``--batch`` (the counts scale with the batch, so the ratios hold at any batch), and
per phase for the recipes that have several. Elementwise work (BatchNorm, ReLU, the masker's
full-resolution maps, the mixup, the losses) is not counted: it is memory-bound, and it is what a
time ratio above this floor is made of. A step whose time ratio to ERM is below its FLOP ratio
would be doing less arithmetic than the method defines; issue 5's "ALIGN <= 3.5x ERM" is read
against the ``align`` row here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, table  # noqa: E402
from train_step import _step_fn, names  # noqa: E402


class _Flops(TorchDispatchMode):
    """PyTorch's FLOP formulas (``torch.utils.flop_counter.flop_registry``) summed over every op
    dispatched; ``FlopCounterMode`` itself tracks modules with backward hooks, which
    ``torch.autograd.grad`` on a leaf (Grad-CAM inside a loss) refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out


def count(fn: Any) -> int:
    """FLOPs of one call of ``fn`` (after one uncounted call: lazy initialisations)."""
    fn()
    with _Flops() as counter:
        fn()
    return counter.flops


def phases(name: str) -> list[str]:
    """The phases of recipe ``name``'s step, in order (one for most)."""
    from train_step import _recipe, split_suffixes

    return list(_recipe(split_suffixes(name)[0], "resnet18").configure_optimizers())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--only", default=None, help="comma list of recipes (default: all of train_step.py's)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    torch.set_grad_enabled(True)
    rows: list[dict[str, Any]] = []
    erm = None
    for name in (a.only.split(",") if a.only else names()):
        total = count(_step_fn(name, a.arch, a.batch, a.size))
        erm = total if name == "erm" else erm
        row: dict[str, Any] = {"recipe": name, "GFLOP / image": total / a.batch / 1e9}
        steps = phases(name)
        if len(steps) > 1:
            row["per phase (GFLOP / image)"] = ", ".join(
                f"{ph} {count(_step_fn(name, a.arch, a.batch, a.size, phase=ph)) / a.batch / 1e9:.2f}" for ph in steps)
        rows.append(row)
    for row in rows:
        row["x erm"] = row["GFLOP / image"] * a.batch * 1e9 / erm if erm else None
    print(f"# training-step arithmetic on {hardware()}: {a.arch} (output_stride 16), {a.size} px, "
          f"matrix products and convolutions, forward + backward")
    print(table(rows, ["recipe", "GFLOP / image", "x erm", "per phase (GFLOP / image)"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"hardware": hardware(), "arch": a.arch, "size": a.size, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
