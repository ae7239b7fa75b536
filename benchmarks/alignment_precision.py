"""How far float32 alignment gradients sit from float64's, by feature-map size: ALIGN's loss
``BCE(GradCAM_y(x), M)`` (Grad-CAM with ``create_graph=True``, soft masks), differentiated into the
classifier's parameters, in float32 and in a float64 copy of the same model and batch.

    python benchmarks/alignment_precision.py                         # test_resnet, 2x2 to 14x14 maps
    python benchmarks/alignment_precision.py --arch resnet18 --settings 64:32,224:32 --seeds 3
    TRITON_INTERPRET=1 python benchmarks/alignment_precision.py --backends torch,triton  # CPU: both

BCE is steep where a min-max normalised map is 0 or 1 (``1/eps``), and small maps upsampled to the
input hold those values on whole blocks of pixels. The error is ``|g32 - g64| / |g64|`` over all
parameters, per seed (random weights and data); the table gives the median and the largest over
seeds. Not a timing: any machine gives the same numbers for the same torch version.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, report  # noqa: E402


def gradient_error(arch: str, size: int, stride: int, seed: int, backend: str, batch: int) -> tuple[float, str]:
    """(relative error of the float32 parameter gradient, the feature map's size)."""
    import timm

    import egl
    from egl.explainers import GradCAM

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=5, output_stride=stride).train()
    x = torch.rand(batch, 3, size, size)
    y = torch.arange(batch) % 5
    mask = torch.rand(batch, 1, size, size)
    bce = egl.create("alignment", "bce")

    def grads(m: torch.nn.Module, dt: torch.dtype, bk: str) -> tuple[torch.Tensor, tuple[int, ...]]:
        out = GradCAM(m, backend=bk).explain(x.to(dt), y, create_graph=True)
        bce(out.saliency, mask.to(out.saliency.dtype)).backward()
        flat = torch.cat([p.grad.double().flatten() for p in m.parameters() if p.grad is not None])
        return flat, tuple(m.forward_features(x[:1].to(dt)).shape[-2:])

    ref, _ = grads(copy.deepcopy(model).double(), torch.float64, "torch")
    got, hw = grads(model, torch.float32, backend)
    return float((got - ref).norm() / ref.norm()), f"{hw[0]}x{hw[1]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="test_resnet")
    p.add_argument("--settings", default="64:32,96:32,64:16,128:16,224:32,224:16",
                   help="input size:output stride pairs, comma-separated")
    p.add_argument("--backends", default="torch", help="the epilogue's backends (triton: CUDA or TRITON_INTERPRET=1)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rows = []
    for setting in a.settings.split(","):
        size, stride = (int(v) for v in setting.split(":"))
        for backend in a.backends.split(","):
            errs, hw = [], ""
            for seed in range(a.seeds):
                e, hw = gradient_error(a.arch, size, stride, seed, backend, a.batch)
                errs.append(e)
            rows.append({"input": f"{size} px", "stride": stride, "map": hw, "backend": backend,
                         "median rel. error": statistics.median(errs), "largest": max(errs)})
    report(f"float32 alignment gradient vs float64: {a.arch}, batch {a.batch}, {a.seeds} seeds; {hardware()}",
           rows, ["input", "stride", "map", "backend", "median rel. error", "largest"], a.json)


if __name__ == "__main__":
    main()
