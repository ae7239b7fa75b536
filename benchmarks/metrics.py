"""Cost of the perturbation metrics against the forward passes they need.

    python benchmarks/metrics.py [--quick] [--steps 16]

ERASER sufficiency + comprehensiveness at 5 thresholds need 2 x 5 perturbed batches plus the
original; RISE deletion + insertion need 2 x (steps + 1). egl builds them lazily and sends them
through the model in chunks. The reference is the same forward passes of prepared inputs; a
per-image Python loop (what Quantus-style code does) is measured beside it.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, round_robin, table  # noqa: E402


def main() -> None:
    import timm

    from egl.explainers import grad_cam
    from egl.metrics import deletion, faithfulness, insertion

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=16, help="RISE steps per curve")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model("resnet18", pretrained=False, num_classes=5, output_stride=16).eval().to(dev)
    x = torch.randn(a.batch, 3, a.size, a.size, device=dev)
    sal = grad_cam(model, x)
    ks = (1, 5, 10, 20, 50)
    inputs = torch.cat([x] * (2 * len(ks) + 1))

    def floor() -> None:
        with torch.no_grad():
            for chunk in inputs.split(256):
                model(chunk)

    def egl_metric() -> None:
        faithfulness(model, x, sal, ks=ks, batch_size=256)

    def per_image() -> None:
        for i in range(min(8, a.batch)):  # 8 images, scaled to the batch below
            faithfulness(model, x[i: i + 1], sal[i: i + 1], ks=ks, batch_size=256)

    times = round_robin({"11 forward passes": floor, "egl faithfulness": egl_metric, "per-image loop": per_image},
                        2 if a.quick else 5)
    times["per-image loop"] *= a.batch / min(8, a.batch)
    rows = [{"variant": k, "ms": 1000 * v, "x floor": v / times["11 forward passes"]} for k, v in times.items()]
    print(f"# faithfulness benchmark on {hardware()}: resnet18 (os16), batch {a.batch} x {a.size}px, k = {ks}")
    print(table(rows, ["variant", "ms", "x floor"]))

    curve_inputs = torch.cat([x] * (2 * (a.steps + 1)))

    def curve_floor() -> None:
        with torch.no_grad():
            for chunk in curve_inputs.split(256):
                model(chunk)

    def egl_curves() -> None:
        deletion(model, x, sal, steps=a.steps, batch_size=256)
        insertion(model, x, sal, steps=a.steps, batch_size=256)

    def curves_per_image() -> None:
        for i in range(min(4, a.batch)):  # 4 images, scaled to the batch below
            deletion(model, x[i: i + 1], sal[i: i + 1], steps=a.steps, batch_size=256)
            insertion(model, x[i: i + 1], sal[i: i + 1], steps=a.steps, batch_size=256)

    floor_name = f"{2 * (a.steps + 1)} forward passes"
    times = round_robin({floor_name: curve_floor, "egl deletion + insertion": egl_curves,
                         "per-image loop": curves_per_image}, 2 if a.quick else 5)
    times["per-image loop"] *= a.batch / min(4, a.batch)
    rows = [{"variant": k, "ms": 1000 * v, "x floor": v / times[floor_name]} for k, v in times.items()]
    print(f"\n# RISE deletion + insertion on {hardware()}: resnet18 (os16), batch {a.batch} x {a.size}px, "
          f"{a.steps} steps per curve")
    print(table(rows, ["variant", "ms", "x floor"]))


if __name__ == "__main__":
    main()
