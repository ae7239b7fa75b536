"""Grad-CAM's variants (HiResCAM, LayerCAM, XGrad-CAM, Grad-CAM++): egl against pytorch-grad-cam.

    python benchmarks/cam_variants.py                          # resnet18, 8 x 224 px, last stage and layer3
    python benchmarks/cam_variants.py --batch 64 --json out.json   # on a GPU

For each variant and target layer, in one process, round-robin with warm-up:
``egl ms`` an inference call (maps upsampled to the input and normalised, given targets),
``x forward`` that over a plain ``no_grad`` forward of the same batch (the floor), ``pgc ms``
pytorch-grad-cam's class of the same name (``pip install egl[bench]``) and ``x pgc`` egl's
speed-up over it, ``max diff`` the largest difference of the two [0, 1] maps (Grad-CAM++: see
docs/explainers.md, pytorch-grad-cam adds 1e-6 to its denominator), and ``align step x ERM`` a
training step with ``CE + 0.1 * BCE(map, mask)`` (``create_graph=True``) over a cross-entropy
step. At the last stage of resnet18 (global average pooling then ``Linear``) egl takes every
variant's closed form; at ``layer3`` the autograd path.
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

CAMS = {"grad_cam": "GradCAM", "hires_cam": "HiResCAM", "layer_cam": "LayerCAM", "xgrad_cam": "XGradCAM",
        "grad_cam_plus_plus": "GradCAMPlusPlus"}
LAYERS = {"last": ("auto", "layer4"), "layer3": ("layer3", "layer3")}  # egl's layer=, pytorch-grad-cam's module


def _peer(name: str, model: torch.nn.Module, module: str, x: torch.Tensor, y: torch.Tensor) -> Callable[[], Any] | None:
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        return None
    cls = getattr(pytorch_grad_cam, CAMS[name])
    targets = [ClassifierOutputTarget(int(t)) for t in y]

    def run() -> Any:  # built per call: its hooks copy every forward's activations to the host
        with cls(model=model, target_layers=[model.get_submodule(module)]) as cam:
            return torch.from_numpy(cam(input_tensor=x, targets=targets))
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cams", default=",".join(CAMS), help="comma list of registered names")
    p.add_argument("--layers", default="last,layer3")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import timm

    from egl import create

    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).to(dev)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    mask = (torch.rand(args.batch, 1, args.size, args.size, device=dev) > 0.5).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # steps that change nothing: every variant sees one model

    def forward() -> Any:
        with torch.no_grad():
            return model.eval()(x)

    def erm_step() -> Any:
        model.train()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    rows = []
    for layer in args.layers.split(","):
        ours_layer, peer_layer = LAYERS[layer]
        for name in args.cams.split(","):
            cam = create("explainer", name, model, ours_layer)
            bce = create("alignment", "bce")

            def infer(cam: Any = cam) -> Any:
                return cam(x, y)

            def align_step(cam: Any = cam, bce: Any = bce) -> Any:
                model.train()
                opt.zero_grad(set_to_none=True)
                out = cam.explain(x, y, create_graph=True)
                (F.cross_entropy(out.logits, y) + 0.1 * bce(out.saliency, mask)).backward()
                opt.step()

            fns = {"forward": forward, "egl": lambda: (model.eval(), infer())[1], "erm": erm_step, "align": align_step}
            peer = _peer(name, model, peer_layer, x, y)
            if peer is not None:
                fns["pgc"] = lambda peer=peer: (model.eval(), peer())[1]
            t = round_robin(fns, args.repeats)
            row: dict[str, Any] = {"layer": layer, "cam": name, "egl ms": 1e3 * t["egl"],
                                   "x forward": t["egl"] / t["forward"],
                                   "align step x ERM": t["align"] / t["erm"]}
            if peer is not None:
                model.eval()
                diff = (infer()[:, 0].cpu() - peer().float()).abs().max()
                row.update({"pgc ms": 1e3 * t["pgc"], "x pgc": t["pgc"] / t["egl"], "max diff": float(diff)})
            rows.append(row)
            print(row, flush=True)
    cols = ["layer", "cam", "egl ms", "x forward", "pgc ms", "x pgc", "max diff", "align step x ERM"]
    report(f"Grad-CAM variants, resnet18, batch {args.batch} x {args.size} px, {hardware()}", rows, cols, args.json)


if __name__ == "__main__":
    main()
