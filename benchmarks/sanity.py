"""The sanity check and max-sensitivity against their floors and against Quantus.

    python benchmarks/sanity.py [--quick] [--batch 8] [--size 64] [--samples 10]

Both metrics call the explainer themselves. Their floor is those Grad-CAM calls alone:

- cascading parameter randomisation over the model's leaves (every module that owns parameters:
  on resnet18 the 41 modules with ``reset_parameters`` that Quantus randomises, checked below):
  one Grad-CAM per layer plus one;
- max-sensitivity with ``samples`` noisy copies: ``samples + 1`` Grad-CAMs of the batch.

egl adds a deep copy, the re-initialisations and the similarities (resp. the noise and the norms).
Quantus 0.6.0 (``pip install quantus``; measured when importable) runs the same work with the same
explainer (egl's Grad-CAM, called through Quantus' ``explain_func`` interface): ``MPRT(layer_order=
"top_down")`` (which explains the trained model again itself) and ``MaxSensitivity(nr_samples=
samples)`` given no attributions (so that it explains the image too: ``samples + 1`` calls, as
egl). Its values differ from egl's by design (another similarity normalisation and noise), so only
the time is compared.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, round_robin, table  # noqa: E402


def main() -> None:
    import timm

    from egl.explainers import GradCAM
    from egl.metrics import parameter_randomization, randomization_layers, sensitivity

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=10, help="max-sensitivity's noisy copies")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=5, output_stride=16).eval()
    x = torch.randn(a.batch, 3, a.size, a.size)
    target = torch.zeros(a.batch, dtype=torch.long)
    steps = len(randomization_layers(model, "leaves")) + 1
    resettable = sum(callable(getattr(m, "reset_parameters", None)) for m in model.modules())
    assert steps - 1 == resettable, (steps - 1, resettable)  # the layers Quantus randomises: the same work

    def cams(n: int) -> None:
        for _ in range(n):
            GradCAM(model)(x, target)

    def explain_func(model: torch.nn.Module, inputs: Any, targets: Any, **kwargs: Any) -> np.ndarray:
        xs = torch.as_tensor(inputs, dtype=torch.float32)
        ys = torch.as_tensor(targets, dtype=torch.long)
        return GradCAM(model)(xs, ys).numpy()

    rand_floor, sens_floor = f"{steps} Grad-CAMs", f"{a.samples + 1} Grad-CAMs"
    variants = {
        rand_floor: lambda: cams(steps),
        "egl parameter_randomization": lambda: parameter_randomization(model, x, target=target, layers="leaves"),
        sens_floor: lambda: cams(a.samples + 1),
        "egl sensitivity": lambda: sensitivity(model, x, samples=a.samples, target=target),
    }
    floors = {rand_floor: rand_floor, "egl parameter_randomization": rand_floor, sens_floor: sens_floor,
              "egl sensitivity": sens_floor}
    try:
        import quantus
    except ImportError:
        quantus = None
        print("# quantus is not installed: `pip install quantus` to measure it beside egl")
    if quantus is not None:
        xn, yn = x.numpy(), target.numpy()
        an = explain_func(model, xn, yn)
        mprt = quantus.MPRT(layer_order="top_down", disable_warnings=True, display_progressbar=False)
        sens = quantus.MaxSensitivity(nr_samples=a.samples, disable_warnings=True, display_progressbar=False)

        def q_mprt() -> None:
            mprt(model=model, x_batch=xn, y_batch=yn, a_batch=an, explain_func=explain_func, device="cpu",
                 batch_size=a.batch)

        def q_sens() -> None:
            sens(model=model, x_batch=xn, y_batch=yn, a_batch=None, explain_func=explain_func, device="cpu",
                 batch_size=a.batch)

        variants["quantus MPRT"] = q_mprt
        variants["quantus MaxSensitivity"] = q_sens
        floors["quantus MPRT"] = rand_floor
        floors["quantus MaxSensitivity"] = sens_floor
    times = round_robin(variants, 1 if a.quick else 3, warmup=0 if a.quick else 1)
    rows = [{"variant": k, "ms": 1000 * v, "x floor": v / times[floors[k]]} for k, v in times.items()]
    version = f", quantus {quantus.__version__}" if quantus is not None else ""
    print(f"# sanity check (cascading over {steps - 1} leaves) and max-sensitivity ({a.samples} samples) on "
          f"{hardware()}{version}: resnet18 (os16), batch {a.batch} x {a.size}px")
    print(table(rows, ["variant", "ms", "x floor"]))


if __name__ == "__main__":
    main()
