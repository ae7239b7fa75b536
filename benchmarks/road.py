"""ROAD's noisy linear imputation: egl against pytorch-grad-cam's copy of the authors' imputer.

    python benchmarks/road.py                                  # 4 images, 64 and 224 px, 10/50/90 % removed
    python benchmarks/road.py --batch 8 --sizes 224 --json out.json

For each image size and share of pixels removed (the most salient first, from a smooth random
map, as a ROAD MoRF step removes them), in one process, round-robin with warm-up: ``egl ms``
:func:`egl.metrics.noisy_linear_imputation` on the batch, ``pgc ms`` pytorch-grad-cam's
``NoisyLinearImputer`` (``pip install egl[bench]``; the authors' code: a ``lil_matrix`` filled
per neighbour, ``spsolve``) called per image as it is, both without noise; ``ms/img`` egl's time
per image, ``x pgc`` egl's speed-up, and ``max diff`` the largest difference of the two results
(both solve the same system exactly: it should read about 1e-6, float32 rounding).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, report, round_robin  # noqa: E402


def _peer(x: torch.Tensor, keep: torch.Tensor) -> Callable[[], Any] | None:
    try:
        from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    except ImportError:
        return None
    imputer = NoisyLinearImputer(noise=0.0)
    return lambda: torch.stack([imputer(x[i], keep[i].float()) for i in range(x.shape[0])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--sizes", default="64,224")
    p.add_argument("--fractions", default="10,50,90", help="percent of the pixels removed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from egl.metrics import noisy_linear_imputation

    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        g = torch.Generator().manual_seed(0)
        x = F.avg_pool2d(torch.randn(args.batch, 3, size + 8, size + 8, generator=g), 9, 1)  # smooth-ish images
        saliency = F.interpolate(torch.rand(args.batch, 1, 7, 7, generator=g), size=(size, size), mode="bilinear",
                                 align_corners=False).flatten(1)
        ranks = saliency.argsort(dim=1, descending=True).argsort(dim=1)
        for pct in (float(f) for f in args.fractions.split(",")):
            keep = (ranks >= int(pct / 100 * size * size + 0.5)).view(args.batch, size, size)
            fns = {"egl": lambda keep=keep: noisy_linear_imputation(x, keep, noise=0.0)}
            peer = _peer(x, keep)
            if peer is not None:
                fns["pgc"] = peer
            t = round_robin(fns, args.repeats)
            row: dict[str, Any] = {"size": size, "removed %": pct, "egl ms": 1e3 * t["egl"],
                                   "ms/img": 1e3 * t["egl"] / args.batch}
            if peer is not None:
                diff = (fns["egl"]() - peer()).abs().max()
                row.update({"pgc ms": 1e3 * t["pgc"], "x pgc": t["pgc"] / t["egl"], "max diff": float(diff)})
            rows.append(row)
            print(row, flush=True)
    cols = ["size", "removed %", "egl ms", "ms/img", "pgc ms", "x pgc", "max diff"]
    report(f"ROAD noisy linear imputation, batch {args.batch}, {hardware()}", rows, cols, args.json)


if __name__ == "__main__":
    main()
