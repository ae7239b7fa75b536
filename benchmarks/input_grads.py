"""Input-gradient saliency (``egl.explainers.InputGradient``) against a ``no_grad`` forward and captum.

    python benchmarks/input_grads.py [--models resnet18,convnext_tiny,vit_small_patch16_224]
                                     [--batch 16 --size 224 --repeats 3] [--json out.json]

Rows per model: the ``no_grad`` forward (the floor: an input gradient costs a forward and a
backward to the image, about 2-3 forwards), egl with the stem's input gradient in the sub-pixel
form of ``egl.kernels.subpixel_dgrad`` (``CONFIG["use"] = "always"``) and by the library's own
convolution backward (``"never"``), and captum's ``Saliency`` (the same map: |∂s_y/∂x|, mean
over channels here, as egl's default). Median of round-robin repeats, one process.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, report, round_robin, sync  # noqa: E402
from saliency import _model  # noqa: E402


def variants(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], Any]]:
    from egl.explainers import InputGradient
    from egl.kernels import subpixel_dgrad

    ig = InputGradient(model)

    def forward() -> Any:
        with torch.no_grad():
            return model(x)

    def egl_with(use: str) -> Callable[[], Any]:
        def run() -> Any:
            saved, subpixel_dgrad.CONFIG["use"] = subpixel_dgrad.CONFIG["use"], use
            try:
                return ig(x, y)
            finally:
                subpixel_dgrad.CONFIG["use"] = saved
        return run

    out = {"forward": forward, "egl (sub-pixel stem gradient)": egl_with("always"),
           "egl (library's stem gradient)": egl_with("never")}
    try:
        from captum.attr import Saliency

        sal = Saliency(model)
        out["captum Saliency"] = lambda: sal.attribute(x.detach().requires_grad_(True), target=y).mean(1, keepdim=True)
    except ImportError:
        pass
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18,convnext_tiny,vit_small_patch16_224")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name in a.models.split(","):
        torch.manual_seed(0)
        model = _model(name, a.size).to(dev)
        x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
        y = torch.randint(0, 10, (a.batch,), device=dev)
        fns = variants(model, x, y)
        times = round_robin(fns, a.repeats)
        sync()
        for v, t in times.items():
            rows.append({"model": name, "variant": v, "ms": 1000 * t, "x forward": t / times["forward"],
                         "egl speed-up": t / times["egl (sub-pixel stem gradient)"]})
    report(f"input-gradient benchmark on {hardware()}: batch {a.batch} x {a.size}px", rows,
           ["model", "variant", "ms", "x forward", "egl speed-up"], a.json)


if __name__ == "__main__":
    main()
