"""Gradient-free maps (Eigen-CAM, Score-CAM): egl against pytorch-grad-cam, and against their floor.

    python benchmarks/gradient_free.py                         # resnet18, 2 x 64 px, last stage
    python benchmarks/gradient_free.py --batch 16 --size 224 --json out.json   # on a GPU

For each method, in one process, round-robin with warm-up: ``egl ms`` an inference call (maps
upsampled to the input and normalised), ``floor ms`` what the method cannot avoid (Eigen-CAM:
one ``no_grad`` forward of the batch; Score-CAM: that forward plus the ``B x C`` masked images'
forwards, batched as egl batches them), ``x floor`` the ratio, ``pgc ms`` pytorch-grad-cam's
class of the same name (``pip install egl[bench]``), ``x pgc`` egl's speed-up over it, and
``max diff`` the largest difference of the two [0, 1] maps: Eigen-CAM compared with
``center=True`` (pytorch-grad-cam centres; its sign is the SVD's, ours follows the activations,
so a map it returns inverted shows here); Score-CAM's maps differ by design (pytorch-grad-cam
upsamples the masks with ``align_corners=True`` and weights channels by a softmax of logits
over the channels, egl by the authors' probabilities: docs/explainers.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, report, round_robin  # noqa: E402

CAMS = {"eigen_cam": "EigenCAM", "score_cam": "ScoreCAM"}
LAYERS = {"last": ("auto", "layer4"), "layer3": ("layer3", "layer3")}  # egl's layer=, pytorch-grad-cam's module


def _peer(name: str, model: torch.nn.Module, module: str, x: torch.Tensor, y: torch.Tensor,
          batch_size: int) -> Callable[[], Any] | None:
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return None
    cls = getattr(pytorch_grad_cam, CAMS[name])
    targets = [ClassifierOutputTarget(int(t)) for t in y]

    def run() -> Any:
        with cls(model=model, target_layers=[model.get_submodule(module)]) as cam:
            if name == "score_cam":
                cam.batch_size = batch_size  # (its default is 16 masked images per pass)
            return torch.from_numpy(cam(input_tensor=x, targets=targets))
    return run


def _floor(name: str, model: torch.nn.Module, module: str, x: torch.Tensor, batch_size: int) -> Callable[[], Any]:
    """One forward; for Score-CAM also the forwards of B x C masked images, ``batch_size`` a pass."""
    channels = 0
    if name == "score_cam":
        store: dict[str, torch.Tensor] = {}
        handle = model.get_submodule(module).register_forward_hook(lambda m, i, o: store.setdefault("a", o))
        with torch.no_grad():
            model(x)
        handle.remove()
        channels = store["a"].shape[1]
    masked = x.repeat_interleave(max(channels, 1), dim=0) if channels else None

    def run() -> Any:
        with torch.no_grad():
            out = model(x)
            if masked is not None:
                for i in range(0, masked.shape[0], batch_size):
                    model(masked[i:i + batch_size])
        return out
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64, help="Score-CAM's masked images per forward pass (both)")
    p.add_argument("--cams", default=",".join(CAMS))
    p.add_argument("--layers", default="last")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import timm

    from egl import create

    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).to(dev).eval()
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    rows = []
    for layer in args.layers.split(","):
        ours_layer, peer_layer = LAYERS[layer]
        for name in args.cams.split(","):
            extra = {"batch_size": args.batch_size} if name == "score_cam" else {}
            cam = create("explainer", name, model, ours_layer, **extra)
            fns = {"egl": lambda cam=cam: cam(x, y), "floor": _floor(name, model, peer_layer, x, args.batch_size)}
            peer = _peer(name, model, peer_layer, x, y, args.batch_size)
            if peer is not None:
                fns["pgc"] = peer
            t = round_robin(fns, args.repeats)
            row: dict[str, Any] = {"layer": layer, "cam": name, "egl ms": 1e3 * t["egl"],
                                   "floor ms": 1e3 * t["floor"], "x floor": t["egl"] / t["floor"]}
            if peer is not None:
                ours = create("explainer", name, model, ours_layer, **({"center": True} if name == "eigen_cam"
                                                                      else extra))
                diff = (ours(x, y)[:, 0].cpu() - peer().float()).abs().max()
                row.update({"pgc ms": 1e3 * t["pgc"], "x pgc": t["pgc"] / t["egl"], "max diff": float(diff)})
            rows.append(row)
            print(row, flush=True)
    cols = ["layer", "cam", "egl ms", "floor ms", "x floor", "pgc ms", "x pgc", "max diff"]
    report(f"Gradient-free maps, resnet18, batch {args.batch} x {args.size} px, {hardware()}", rows, cols, args.json)


if __name__ == "__main__":
    main()
