"""Correctness on the device of what egl picks by default there, against float64 references.

    python benchmarks/gpu_checks.py [--json out.json]

The CPU tests run these kernels under ``TRITON_INTERPRET=1``; this runs them compiled, with the
CUDA defaults (``reduce="auto"``, ``grads="auto"``, ``bn_stats`` for the masker's BatchNorm,
the sub-pixel stem gradient), on the shapes the training and saliency paths meet:

- the fused Grad-CAM epilogue, maps and both gradients (bf16 and fp32; NCHW and channels-last;
  batches of 1 and 3; channel counts no whole-channel row divides; non-square maps), and ALIGN's
  BCE through it on 2 x 2 maps upsampled to 64 px (blocks of pixels copy a map's extremes);
- ``egl.kernels.bn_stats`` on the learned masker's channels-last maps (also at a mean of 1000),
  ``egl.kernels.channel_affine``, the multiply-add that follows it, and ``egl.kernels.bn_backward``;
- ``egl.kernels.subpixel_dgrad.conv2d_input_grad`` on ResNet, ConvNeXt and ViT stems;
- ``egl.explainers.GraphedExplainer``'s replays against eager calls (CUDA only; the last column
  says how many captures were made, or the error of a capture that failed).

Each row prints its relative error (``|a - ref| / |ref|``, Frobenius norms) beside its
tolerance; the exit status is 1 when any row is over. Without CUDA: runs the same checks
under the Triton interpreter at smaller sizes with ``--smoke``, else prints that it skipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, report  # noqa: E402

#: (dtype, memory format) -> tolerance for (maps, d acts, d w): bf16 ``d acts`` is rounded once to
#: bf16 on its write (relative rounding 2^-9 ≈ 2e-3); everything else sums in fp32.
TOL = {torch.bfloat16: (1e-4, 4e-3, 1e-4), torch.float32: (1e-5, 1e-5, 1e-5)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def epilogue_rows(device: str, small: bool) -> list[dict[str, Any]]:
    from egl.kernels import cam_epilogue, cam_epilogue_reference

    shapes = [(256, 512, 7, 7), (256, 2048, 7, 7), (256, 1024, 14, 14), (256, 512, 28, 28), (3, 100, 7, 7),
              (1, 64, 5, 3), (64, 512, 14, 14, "cl")]
    if small:
        shapes = [(2, 64, 7, 7), (2, 32, 14, 14), (3, 100, 7, 7), (1, 64, 5, 3), (2, 64, 14, 14, "cl")]
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for shape in shapes:
            b, c, h, w = shape[:4]
            cl = len(shape) > 4
            torch.manual_seed(b * c + h)
            acts = torch.randn(b, c, h, w, device=device).to(dtype)
            if cl:
                acts = acts.contiguous(memory_format=torch.channels_last)
            wts = torch.randn(b, c, device=device)
            size = (32, 32) if small else (224, 224)
            g = torch.randn(b, 1, *size, device=device)
            a1, w1 = acts.clone().requires_grad_(True), wts.clone().requires_grad_(True)
            out = cam_epilogue(a1, w1, size, scale=1.0 / (h * w), backend="triton")
            ga, gw = torch.autograd.grad(out, [a1, w1], g)
            a2, w2 = acts.double().requires_grad_(True), wts.double().requires_grad_(True)
            ref = cam_epilogue_reference(a2, w2, size, scale=1.0 / (h * w))
            ra, rw = torch.autograd.grad(ref, [a2, w2], g.double())
            name = f"epilogue {str(dtype)[6:]} {b}x{c}x{h}x{w}{' channels-last' if cl else ''}"
            for what, got, want, tol in zip(("maps", "d acts", "d w"), (out, ga, gw), (ref, ra, rw), TOL[dtype]):
                rows.append({"check": f"{name}: {what}", "rel err": _rel(got, want), "tol": tol})
            if cl:
                rows.append({"check": f"{name}: d acts keeps channels-last",
                             "rel err": float(not ga.is_contiguous(memory_format=torch.channels_last)), "tol": 0.0})
    return rows


def small_map_bce_rows(device: str, small: bool) -> list[dict[str, Any]]:
    """ALIGN's BCE on 2 x 2 maps upsampled to 64 px through the Triton epilogue in float32, against
    float64: 16 x 16 blocks copy each corner, and the backward must pass no gradient from the
    blocks that hold a map's extremes (their large BCE gradients cancelled only to rounding: 2.3-3.3e-4
    here under the interpreter before, 3-7e-5 after; what is left comes from pixels near, not at, an
    extreme, whose gradient is steep in the map's own float32 rounding)."""
    import egl
    from egl.kernels import cam_epilogue, cam_epilogue_reference

    bce = egl.create("alignment", "bce")
    rows = []
    for relu in (True, False):
        torch.manual_seed(7)
        acts, wts = torch.randn(8, 32, 2, 2, device=device).relu(), torch.randn(8, 32, device=device) * 0.1
        mask = torch.rand(8, 1, 64, 64, device=device)
        grads = []
        for dt, fn in ((torch.float32, lambda *a, **k: cam_epilogue(*a, backend="triton", **k)),
                       (torch.float64, cam_epilogue_reference)):
            a1, w1 = acts.to(dt).clone().requires_grad_(True), wts.to(dt).clone().requires_grad_(True)
            sal = fn(a1, w1, (64, 64), scale=0.25, relu=relu)
            grads.append(torch.autograd.grad(bce(sal, mask.to(dt)), [a1, w1]))
        for what, i in (("d acts", 0), ("d w", 1)):
            rows.append({"check": f"epilogue float32 BCE on 2x2 maps at 64 px{'' if relu else ', signed'}: {what}",
                         "rel err": _rel(grads[0][i], grads[1][i]), "tol": 1.5e-4})
    return rows


def bn_stats_rows(device: str, small: bool) -> list[dict[str, Any]]:
    from egl.kernels.bn_stats import bn_stats

    shape = (8, 32, 32, 32) if small else (256, 32, 224, 224)
    rows = []
    for offset in (0.0, 1000.0):
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(1)
            x = (torch.randn(shape, device=device) + offset).to(dtype).contiguous(memory_format=torch.channels_last)
            mean, var = bn_stats(x)
            rv, rm = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
            name = f"bn_stats {str(dtype)[6:]} {'x'.join(map(str, shape))} mean {offset:g}"
            # the mean's error against |mean| + std (a mean near 0 has no relative error of its own)
            err = float((mean.double() - rm).norm() / (rm.abs() + rv.sqrt()).norm())
            rows.append({"check": f"{name}: mean (error / (|mean| + std))", "rel err": err, "tol": 1e-6})
            rows.append({"check": f"{name}: var", "rel err": _rel(var, rv), "tol": 1e-5})
    return rows


def bn_backward_rows(device: str, small: bool) -> list[dict[str, Any]]:
    """BatchNorm's training-mode backward (``egl.kernels.bn_backward``) against PyTorch's kernel in
    float64 on the same inputs (also at a mean of 1000, and with 33 channels: masked columns)."""
    from egl.kernels.bn_backward import bn_backward, bn_backward_reference

    shapes = [(8, 32, 32, 32), (4, 33, 9, 9)] if small else [(256, 32, 224, 224), (64, 33, 56, 56)]
    rows = []
    for shape, offset in ((shapes[0], 0.0), (shapes[0], 1000.0), (shapes[1], 0.0)):  # (33 channels: masked)
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(3)
            cl = torch.channels_last
            x = (torch.randn(shape, device=device) + offset).to(dtype).contiguous(memory_format=cl)
            g = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=cl)
            var, mean = torch.var_mean(x.float(), dim=(0, 2, 3), correction=0)
            invstd, gamma = torch.rsqrt(var + 1e-5), torch.rand(shape[1], device=device) + 0.5
            got = bn_backward(g, x, gamma, mean, invstd)
            want = bn_backward_reference(g.double(), x.double(), gamma.double(), mean.double(), invstd.double())
            name = f"bn_backward {str(dtype)[6:]} {'x'.join(map(str, shape))} mean {offset:g}"
            tol_dx = 4e-3 if dtype == torch.bfloat16 else 1e-5  # (bf16 dx: rounded once on its write)
            for what, a, b, tol in zip(("dx", "d gamma", "d beta"), got, want, (tol_dx, 1e-5, 1e-5)):
                rows.append({"check": f"{name}: {what}", "rel err": _rel(a, b), "tol": tol})
            rows.append({"check": f"{name}: dx keeps channels-last", "tol": 0.0,
                         "rel err": float(not got[0].is_contiguous(memory_format=cl))})
            del x, g, got, want
    return rows


def bias_relu_rows(device: str, small: bool) -> list[dict[str, Any]]:
    """The learned masker's bias add + ReLU in one pass (``egl.maskers._bias_relu``, not yet a
    default): against ``relu(h + bias)`` in float64, the largest error in units of the dtype's
    epsilon times ``|h| + |bias|`` (one rounding: tolerance 1)."""
    from egl.maskers._bias_relu import bias_relu

    shape = (8, 32, 32, 32) if small else (256, 32, 224, 224)
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        torch.manual_seed(4)
        h = torch.randn(shape, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
        b = torch.randn(shape[1], device=device)
        want = torch.relu(h.double() + b.double().view(1, -1, 1, 1))
        bound = (torch.finfo(dtype).eps * (h.double().abs() + b.double().abs().view(1, -1, 1, 1))).clamp_min(1e-300)
        with torch.no_grad():
            got = bias_relu(h.clone(), b)
        name = f"bias_relu {str(dtype)[6:]} {'x'.join(map(str, shape))}"
        rows.append({"check": f"{name}: max error (eps x (|h| + |b|))", "tol": 1.0,
                     "rel err": float(((got.double() - want).abs() / bound).max())})
        del h, want, bound, got
    return rows


def channel_affine_rows(device: str, small: bool) -> list[dict[str, Any]]:
    """BatchNorm's multiply-add (``egl.kernels.channel_affine``): the largest error against the
    float64 result, in units of the dtype's epsilon times ``|x·s| + |t|`` (a multiply-add rounds
    at most twice: tolerance 2), and the map's layout; 32 and 33 channels (masked columns)."""
    from egl.kernels.channel_affine import channel_affine

    shapes = [(8, 32, 32, 32), (4, 33, 9, 9)] if small else [(256, 32, 224, 224), (64, 33, 56, 56)]
    rows = []
    for shape, dtype in [(s, d) for s in shapes for d in (torch.bfloat16, torch.float32)]:
        torch.manual_seed(2)
        x = (torch.randn(shape, device=device) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
        sc, sh = torch.rand(shape[1], device=device) + 0.5, torch.randn(shape[1], device=device)
        out = channel_affine(x, sc, sh)
        prod, shift = x.double() * sc.double().view(1, -1, 1, 1), sh.double().view(1, -1, 1, 1)
        bound = (torch.finfo(dtype).eps * (prod.abs() + shift.abs())).clamp_min(1e-300)
        units = (out.double() - (prod + shift)).abs() / bound
        name = f"channel_affine {str(dtype)[6:]} {'x'.join(map(str, shape))}"
        rows.append({"check": f"{name}: max error (eps x (|x s| + |t|))", "rel err": float(units.max()), "tol": 2.0})
        rows.append({"check": f"{name}: keeps channels-last and dtype", "tol": 0.0, "rel err": float(
            not (out.is_contiguous(memory_format=torch.channels_last) and out.dtype == dtype))})
        del prod, shift, bound, units
    return rows


def subpixel_rows(device: str, small: bool) -> list[dict[str, Any]]:
    from egl.kernels.subpixel_dgrad import conv2d_input_grad

    stems = {"resnet 7x7/2": (64, 7, 2, 3), "convnext 4x4/4": (96, 4, 4, 0), "vit 16x16/16": (384, 16, 16, 0)}
    n, px = (2, 64) if small else (64, 224)
    rows = []
    for name, (c_out, k, s, p) in stems.items():
        for dtype in (torch.bfloat16, torch.float32):
            torch.manual_seed(2)
            wt = (torch.randn(c_out, 3, k, k, device=device) / k).to(dtype)
            ho = (px + 2 * p - k) // s + 1
            g = torch.randn(n, c_out, ho, ho, device=device).to(dtype)
            ref = torch.nn.grad.conv2d_input((n, 3, px, px), wt.double(), g.double(), stride=s, padding=p)
            # float32 twice: cuDNN's TF32 convolutions (PyTorch's default) give 3e-4, why use="auto"
            # keeps the library's backward for float32 on CUDA; without TF32 the form is exact
            for tf32 in ((False, True) if dtype == torch.float32 and device == "cuda" else (None,)):
                saved = torch.backends.cudnn.allow_tf32
                torch.backends.cudnn.allow_tf32 = saved if tf32 is None else tf32
                try:
                    got = conv2d_input_grad(g, wt, (px, px), (s, s), (p, p))
                    lib = torch.nn.grad.conv2d_input((n, 3, px, px), wt, g, stride=s, padding=p)
                finally:
                    torch.backends.cudnn.allow_tf32 = saved
                tol = 1e-2 if dtype == torch.bfloat16 else 1e-3 if tf32 else 1e-5  # bf16: outputs rounded
                label = "" if tf32 is None else ", cuDNN TF32 allowed" if tf32 else ", TF32 off"
                rows.append({"check": f"sub-pixel {name} {str(dtype)[6:]}{label}", "rel err": _rel(got, ref),
                             "tol": tol, "library's rel err": _rel(lib, ref)})
    return rows


def graphed_rows(device: str, small: bool) -> list[dict[str, Any]]:
    """:class:`egl.explainers.GraphedExplainer`'s replays against eager calls, one wrapper through a
    sequence that a stale graph would get wrong: new inputs and targets (host list, device
    tensor, predicted class), fp32 then bf16 autocast (a second graph), a weight update in place
    between autocast blocks (the cast must be replayed from the parameters, not cached), a second
    batch size, and (with two GPUs) a model on ``cuda:1`` while ``cuda:0`` is current. CUDA only:
    off CUDA the wrapper makes the eager call."""
    if device != "cuda":
        return []
    import timm

    from egl.explainers import GradCAM, GraphedExplainer

    rows = []
    devices = ["cuda:0", "cuda:1"] if torch.cuda.device_count() > 1 else ["cuda:0"]
    for name in ("resnet18", "convnext_tiny", "vit_small_patch16_224"):
        kw = {"img_size": 64} if name.startswith("vit") else {}
        for dev in devices:
            torch.manual_seed(3)
            model = timm.create_model(name, pretrained=False, num_classes=10, **kw).to(dev).eval()
            head = model.get_classifier().weight
            for kind in ("list", "device", "predicted"):
                errs, note = [], ""
                try:
                    cam, eager = GraphedExplainer(GradCAM(model)), GradCAM(model)
                    steps = [(8, False, False), (8, False, False), (8, True, False), (8, True, True),
                             (8, True, False), (8, False, True), (4, False, False), (8, True, False)]
                    for seed, (batch, amp, update) in enumerate(steps):
                        if update:  # an optimiser step's in-place update
                            with torch.no_grad():
                                head.mul_(1.5).add_(0.01)
                        g = torch.Generator(device=dev).manual_seed(seed)
                        x = torch.randn(batch, 3, 64, 64, device=dev, generator=g)
                        y = torch.randint(0, 10, (batch,), device=dev, generator=g)
                        t = y.tolist() if kind == "list" else y if kind == "device" else None
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                            got, ref = cam(x, t), eager(x, t)
                        errs.append(_rel(got, ref))
                    note = f"{cam.captures} captures, {len(steps)} calls"
                except Exception as e:  # a capture that fails is a finding: keep the other rows
                    errs, note = [float("inf")], f"{type(e).__name__}: {e}"[:200]
                rows.append({"check": f"graphed {name} on {dev}, {kind} targets, fp32/bf16, weights updated",
                             "rel err": max(errs), "tol": 1e-5, "library's rel err": note})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="without CUDA: small sizes under TRITON_INTERPRET=1")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    if not torch.cuda.is_available() and not a.smoke:
        print("gpu checks skipped: no CUDA device")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    small = device == "cpu"
    if small:  # before egl's kernels are first imported: Triton reads it when a kernel is defined
        os.environ.setdefault("TRITON_INTERPRET", "1")
    rows = [*epilogue_rows(device, small), *small_map_bce_rows(device, small), *bn_stats_rows(device, small),
            *channel_affine_rows(device, small),
            *bn_backward_rows(device, small), *bias_relu_rows(device, small),
            *subpixel_rows(device, small),
            *graphed_rows(device, small)]
    for r in rows:
        r["ok"] = "ok" if r["rel err"] <= r["tol"] else "OVER"
    report(f"correctness of the device defaults on {hardware()} (relative to float64)", rows,
           ["check", "rel err", "tol", "ok", "library's rel err"], a.json)
    over = [r["check"] for r in rows if r["ok"] != "ok"]
    if over:
        print(f"{len(over)} check(s) over tolerance: {', '.join(over)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
