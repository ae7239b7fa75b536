"""The fused Grad-CAM epilogue on a GPU: Triton kernel vs the unfused PyTorch path and torch.compile.

    python benchmarks/kernel.py          # needs a CUDA GPU; prints "skipped" otherwise

Sizes: batch 256, 512-2048 channels, 7x7 to 28x28 maps, 224 px output. Reports median
microseconds and the achieved memory bandwidth (bytes that must move: activations read once,
maps written once) as a fraction of the card's peak (``--peak-gbs``, default H100 SXM 3350 GB/s).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, round_robin, table  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peak-gbs", type=float, default=3350.0)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    if not torch.cuda.is_available():
        print("kernel benchmark skipped: no CUDA device")
        return
    from egl.kernels import cam_epilogue, cam_epilogue_reference

    compiled = torch.compile(cam_epilogue_reference)
    rows = []
    for c, hw in [(512, 7), (2048, 7), (1024, 14), (512, 28)]:
        acts = torch.randn(256, c, hw, hw, device="cuda")
        w = torch.randn(256, c, device="cuda")
        size = (224, 224)
        fns = {"torch": lambda: cam_epilogue_reference(acts, w, size, scale=1 / hw**2),
               "torch.compile": lambda: compiled(acts, w, size, scale=1 / hw**2),
               "triton": lambda: cam_epilogue(acts, w, size, scale=1 / hw**2, backend="triton")}
        times = round_robin(fns, a.repeats, warmup=3)
        moved = acts.numel() * acts.element_size() + 256 * 224 * 224 * 4
        for k, t in times.items():
            gbs = moved / t / 1e9
            rows.append({"C": c, "map": f"{hw}x{hw}", "variant": k, "us": 1e6 * t, "GB/s": gbs,
                         "of peak": gbs / a.peak_gbs, "x triton": t / times["triton"]})
    print(f"# fused epilogue on {hardware()}")
    print(table(rows, ["C", "map", "variant", "us", "GB/s", "of peak", "x triton"]))


if __name__ == "__main__":
    main()
