"""How far float32 alignment gradients sit from float64's, by feature-map size: ALIGN's loss
``BCE(GradCAM_y(x), M)`` (Grad-CAM with ``create_graph=True``, soft masks), differentiated into the
classifier's parameters, in float32 and in a float64 copy of the same model and batch.

    python benchmarks/alignment_precision.py                         # test_resnet, 2x2 to 14x14 maps
    python benchmarks/alignment_precision.py --arch resnet18 --settings 64:32,224:32 --seeds 3
    TRITON_INTERPRET=1 python benchmarks/alignment_precision.py --backends torch,triton  # CPU: both
    python benchmarks/alignment_precision.py --autocast bf16     # under bfloat16 autocast instead

BCE is steep where a min-max normalised map is 0 or 1 (``1/eps``), and small maps upsampled to the
input hold those values on whole blocks of pixels. The error is ``|g32 - g64| / |g64|`` over all
parameters, per seed (random weights and data); the table gives the median and the largest over
seeds; the last column is the same measure for plain cross-entropy on the same model and batch,
the precision's own scale. Not a timing: any machine gives the same numbers for the same torch
version.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, report  # noqa: E402


def gradient_errors(arch: str, size: int, stride: int, seed: int, backend: str, batch: int,
                    autocast: str = "none") -> tuple[float, float, str]:
    """Relative errors of the parameter gradients of the alignment loss and, for scale, of plain
    cross-entropy on the same model and batch, and the feature map's size. With ``autocast="bf16"``
    the float32 model runs under bfloat16 autocast, as mixed-precision training does."""
    import timm

    import egl
    from egl.explainers import GradCAM

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=5, output_stride=stride).train()
    x = torch.rand(batch, 3, size, size)
    y = torch.arange(batch) % 5
    mask = torch.rand(batch, 1, size, size)
    bce = egl.create("alignment", "bce")

    def grads(m: torch.nn.Module, dt: torch.dtype, bk: str, loss: str) -> torch.Tensor:
        params = [p for p in m.parameters() if p.requires_grad]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast == "bf16" and dt != torch.float64):
            if loss == "ce":
                value = F.cross_entropy(m(x.to(dt)).float(), y)
            else:
                out = GradCAM(m, backend=bk).explain(x.to(dt), y, create_graph=True)
                value = bce(out.saliency, mask.to(out.saliency.dtype))
        got = torch.autograd.grad(value, params, allow_unused=True)
        return torch.cat([g.double().flatten() for g in got if g is not None])

    errors = []
    for loss in ("bce", "ce"):
        ref = grads(copy.deepcopy(model).double(), torch.float64, "torch", loss)
        got = grads(copy.deepcopy(model), torch.float32, backend, loss)
        errors.append(float((got - ref).norm() / ref.norm()))
    with torch.no_grad():
        hw = tuple(copy.deepcopy(model).eval().forward_features(x[:1]).shape[-2:])
    return errors[0], errors[1], f"{hw[0]}x{hw[1]}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="test_resnet")
    p.add_argument("--settings", default="64:32,96:32,64:16,128:16,224:32,224:16",
                   help="input size:output stride pairs, comma-separated")
    p.add_argument("--backends", default="torch", help="the epilogue's backends (triton: CUDA or TRITON_INTERPRET=1)")
    p.add_argument("--autocast", choices=("none", "bf16"), default="none",
                   help="run the float32 model under bfloat16 autocast (mixed-precision training)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    rows = []
    for setting in a.settings.split(","):
        size, stride = (int(v) for v in setting.split(":"))
        for backend in a.backends.split(","):
            errs, ce, hw = [], [], ""
            for seed in range(a.seeds):
                e, c, hw = gradient_errors(a.arch, size, stride, seed, backend, a.batch, a.autocast)
                errs.append(e)
                ce.append(c)
            rows.append({"input": f"{size} px", "stride": stride, "map": hw, "backend": backend,
                         "median rel. error": statistics.median(errs), "largest": max(errs),
                         "cross-entropy's (median)": statistics.median(ce)})
    what = "float32" if a.autocast == "none" else "bf16-autocast"
    report(f"{what} alignment gradient vs float64: {a.arch}, batch {a.batch}, {a.seeds} seeds; {hardware()}",
           rows, ["input", "stride", "map", "backend", "median rel. error", "largest", "cross-entropy's (median)"],
           a.json)


if __name__ == "__main__":
    main()
