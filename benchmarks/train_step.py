"""Training-step cost of every recipe as a ratio to an ERM step on the same batch.

    python benchmarks/train_step.py            # resnet18 (output_stride 16) at 64 px, batch 32
    python benchmarks/train_step.py --quick    # fewer repeats
    python benchmarks/train_step.py --device cuda --precision bf16 --batch 256 --size 224   # GPU throughput

Rows: ``erm``; ``clf+align`` (a classifier step with the Grad-CAM BCE alignment term only: ALIGN
with no regularizer and no masker phase); ``align`` (the full ALIGN iteration: masker phase +
classifier phase with the mixup regularizer); ``align-keep`` (the same with
``masker_checkpoint=False``); and every other registered recipe. With ``--only``, also
``align-ckpt`` (``masker_checkpoint=True``), ``align-keep-whole`` and ``align-ckpt-whole`` (the
learned masker with ``recompute_bn=False``: every BatchNorm output kept; kept whole or
recomputed), ``align-gt`` (ground-truth
masks: the classifier phase alone), ``align-w1`` (a learned masker
one channel wide: the masker phase's classifier passes at almost no masker cost), any row with
suffixes that force a library setting (``SUFFIXES``, several at once, e.g.
``align-nativebn-nativedgrad``): ``-bnstats`` / ``-nativebn`` (the learned masker's BatchNorm
statistics from ``egl.kernels.bn_stats`` or from ``torch.native_batch_norm``:
``_bn_conv.CONFIG["stats"]`` = ``"kernel"`` / ``"native"``; default ``"auto"``),
``-subpixel`` / ``-nativedgrad`` (the stem's input gradient always in the sub-pixel form of
``egl.kernels.subpixel_dgrad``, or by the library's own convolution backward: its
``CONFIG["use"]`` = ``"always"`` / ``"never"``; default ``"auto"``), ``-affinekernel`` /
``-torchaffine`` (BatchNorm's multiply-add by ``egl.kernels.channel_affine`` or ``torch.addcmul``:
``_bn_conv.CONFIG["affine"]`` = ``"kernel"`` / ``"torch"``; default ``"auto"``), ``-bnbwdkernel`` /
``-nativebnbwd`` (BatchNorm's backward by ``egl.kernels.bn_backward`` or PyTorch's:
``_bn_conv.CONFIG["backward"]``), ``-biasrelu`` / ``-nobiasrelu`` (the learned masker's bias adds
and ReLUs in one pass each, or as PyTorch's modules: ``egl.maskers._bias_relu.CONFIG["mode"]``),
``erm-fbn``, ``align-fbn`` and ``align-fbn-2pass``: frozen BatchNorm
(``recipes.freeze_batchnorm``), where ALIGN explains ``x`` and the mixed batch in one pass
(``batch_mixup="auto"``), and the same in two passes (``batch_mixup=False``). Median of
round-robin repeats in one process; peak memory with each recipe in its own process.
Labels travel as ``fit`` moves them (read on the host, then copied to the device).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, peak_memory_mb, report, round_robin, run_isolated  # noqa: E402


def _setup(arch: str, batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y = torch.arange(batch) % 5
    domain = torch.arange(batch) % 2
    mask = torch.zeros(batch, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return x, y, domain, mask


def _recipe(name: str, arch: str) -> Any:
    import timm

    import egl

    model = timm.create_model(arch, pretrained=False, num_classes=5, output_stride=16)
    if name.endswith("-fbn") or name.endswith("-fbn-2pass"):
        from egl.recipes import freeze_batchnorm

        freeze_batchnorm(model)
        if name == "erm-fbn":
            return egl.create("recipe", "erm", model)
        return egl.create("recipe", "align", model, warmup_steps=0, batch_mixup="auto" if name == "align-fbn" else False)
    if name == "clf+align":
        return egl.create("recipe", "align", model, regularizer=None, warmup_steps=0, masker="ground_truth")
    if name == "align-keep":  # ALIGN keeping the masker's activations for the backward
        return egl.create("recipe", "align", model, warmup_steps=0, masker_checkpoint=False)
    if name in ("align-keep-whole", "align-ckpt-whole"):  # ... with every BatchNorm output kept too
        masker = egl.create("masker", "learned", recompute_bn=False)
        return egl.create("recipe", "align", model, warmup_steps=0, masker=masker,
                          masker_checkpoint=name == "align-ckpt-whole")
    if name == "align-gt":  # the classifier phase alone (ground-truth masks: no masker phase)
        return egl.create("recipe", "align", model, warmup_steps=0, masker="ground_truth")
    if name == "align-w1":  # the masker phase with a one-channel masker: what the classifier costs there
        return egl.create("recipe", "align", model, warmup_steps=0, masker=egl.create("masker", "learned", width=1))
    if name == "align-ckpt":  # ALIGN recomputing the masker's activations in its backward
        return egl.create("recipe", "align", model, warmup_steps=0, masker_checkpoint=True)
    kw = {"warmup_steps": 0} if name == "align" else {}
    return egl.create("recipe", name, model, **kw)


#: Row-name suffixes that force one library setting for the row (any order, several at once):
#: ``egl.maskers._bn_conv.CONFIG["stats"]`` / ``["affine"]`` / ``["backward"]``,
#: ``egl.kernels.subpixel_dgrad.CONFIG["use"]`` and ``egl.maskers._bias_relu.CONFIG["mode"]``.
SUFFIXES = {"-bnstats": ("stats", "kernel"), "-nativebn": ("stats", "native"),
            "-subpixel": ("use", "always"), "-nativedgrad": ("use", "never"),
            "-affinekernel": ("affine", "kernel"), "-torchaffine": ("affine", "torch"),
            "-bnbwdkernel": ("backward", "kernel"), "-nativebnbwd": ("backward", "native"),
            "-biasrelu": ("mode", "kernel"), "-nobiasrelu": ("mode", "torch")}


def split_suffixes(name: str) -> tuple[str, dict[str, str]]:
    """``"align-nativebn-nativedgrad"`` → ``("align", {"stats": "native", "use": "never"})``."""
    forced: dict[str, str] = {}
    while any(name.endswith(k) for k in SUFFIXES):
        k = next(k for k in SUFFIXES if name.endswith(k))
        forced.setdefault(*SUFFIXES[k])
        name = name[: -len(k)]
    return name, forced


def _step_fn(name: str, arch: str, batch: int, size: int, device: str = "cpu", precision: str = "fp32",
             channels_last: bool = False, phase: str | None = None) -> Any:
    """One training step of recipe ``name`` as a closure; with ``phase``, that phase's loss and
    backward alone (no optimiser step, no value checks: what a profile of the phase needs)."""
    import contextlib

    from egl.recipes import as_batch
    from egl.train import LossScaler

    x, y, d, m = _setup(arch, batch, size)
    name, forced = split_suffixes(name)
    recipe = _recipe(name, arch).to(device).train()
    if channels_last:  # as fit(channels_last=True): model and images in NHWC
        recipe = recipe.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opts = recipe.configure_optimizers()
    data = as_batch({"image": x, "label": y, "domain": d, "mask": m}).to(device)  # as fit does
    step = [1]
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=half)) if half is not None \
        else contextlib.nullcontext
    # fp16 as fit(precision="fp16") runs it: one loss scaler per phase
    kwargs = {"scalers": {name: LossScaler() for name in opts}} if precision == "fp16" else {}

    def run() -> None:
        from egl.kernels import subpixel_dgrad
        from egl.maskers import _bn_conv

        from egl.maskers import _bias_relu

        configs = {"stats": _bn_conv.CONFIG, "affine": _bn_conv.CONFIG, "backward": _bn_conv.CONFIG,
                   "use": subpixel_dgrad.CONFIG, "mode": _bias_relu.CONFIG}
        saved = {k: configs[k][k] for k in forced}  # per row: rows share a process
        for k, v in forced.items():
            configs[k][k] = v
        try:
            with autocast():
                recipe.training_step(data, step[0], opts, **kwargs)
        finally:
            for k, v in saved.items():
                configs[k][k] = v

    def run_phase() -> None:
        with autocast():
            recipe.compute_phase(phase, data, step[0])["total"].backward()
    return run if phase is None else run_phase


def names() -> list[str]:
    import egl

    rest = [n for n in egl.list_components("recipe") if n not in ("erm", "align")]
    return ["erm", "clf+align", "align", "align-keep", *rest]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="bf16 / fp16: torch.autocast (fp16 with loss scaling), as fit(precision=)")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC model and images, as fit(channels_last=True)")
    p.add_argument("--inline-memory", action="store_true", help="measure memory in this process (GPU)")
    p.add_argument("--only", default=None, help="comma list of recipes (default: all)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="torch.backends.cudnn.benchmark = True (cuDNN times its algorithms per shape)")
    p.add_argument("--json", default=None)
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    if a.one:
        fn = _step_fn(a.one, a.arch, a.batch, a.size, a.device, a.precision, a.channels_last)
        fn()
        peak, _ = peak_memory_mb(fn)
        print(json.dumps({"peak_mb": peak}))
        return
    chosen = ["erm", *[n for n in a.only.split(",") if n != "erm"]] if a.only else names()
    fns = {n: _step_fn(n, a.arch, a.batch, a.size, a.device, a.precision, a.channels_last) for n in chosen}
    times = round_robin(fns, 2 if a.quick else a.repeats)
    rows = []
    for n, t in times.items():
        if a.inline_memory:  # after the timed rounds: warm
            peak = peak_memory_mb(fns[n])[0]
        else:
            peak = run_isolated(__file__, ["--one", n, "--arch", a.arch, "--batch", str(a.batch), "--size",
                                           str(a.size), "--device", a.device, "--precision", a.precision,
                                           *(["--channels-last"] if a.channels_last else [])]).get("peak_mb")
        rows.append({"recipe": n, "ms/step": 1000 * t, "img/s": a.batch / t, "x erm": t / times["erm"],
                     "peak MB": peak})
    erm_mem = rows[0]["peak MB"]
    for r in rows:
        if isinstance(r["peak MB"], float) and isinstance(erm_mem, float) and erm_mem > 0:
            r["x erm mem"] = r["peak MB"] / erm_mem
    report(f"train-step benchmark on {hardware()}: {a.arch} (output_stride 16), batch {a.batch} x {a.size}px, "
           f"{a.device}, {a.precision}{', channels-last' if a.channels_last else ''}"
           f"{', cudnn.benchmark' if a.cudnn_benchmark else ''}",
           rows, ["recipe", "ms/step", "img/s", "x erm", "peak MB", "x erm mem"], a.json)


if __name__ == "__main__":
    main()
