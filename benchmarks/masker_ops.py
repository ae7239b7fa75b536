"""The full-resolution operations of ALIGN's masker phase, each timed alone in each memory layout.

    python benchmarks/masker_ops.py --device cuda --precision bf16 --batch 256 --size 224

The masker phase runs the learned masker (3x3 convolutions with 3 -> 32 and 32 -> 32 channels,
a 1x1 with 32 -> 1, BatchNorm, at the input's resolution) and differentiates the frozen
classifier down to its input (the stem convolution's input gradient, 3 output channels, over
twice the batch). Those shapes are degenerate for convolution libraries; this times each one,
forward and backward, in NCHW and NHWC, to find which layout (and which formulation) is fast.
Rows: median milliseconds (CUDA events on a GPU, wall time on the CPU), and the bytes the
operation must move at least, as GB/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, table  # noqa: E402


def _time(fn: Callable[[], Any], device: str, repeats: int) -> float:
    if device.startswith("cuda"):
        from triton.testing import do_bench

        return do_bench(fn, warmup=5, rep=max(20, 10 * repeats), return_mode="median") / 1e3
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def cases(b: int, s: int, dev: str, dt: torch.dtype, width: int = 32) -> dict[str, tuple[Callable[[], Any], int]]:
    """name -> (closure, bytes it must move at least), for both layouts."""
    out: dict[str, tuple[Callable[[], Any], int]] = {}
    e = torch.tensor([], dtype=dt).element_size()
    for fmt_name, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
        def t(*shape: int, grad: bool = False) -> torch.Tensor:
            return torch.randn(*shape, device=dev, dtype=dt).contiguous(memory_format=fmt).requires_grad_(grad)
        x = t(b, 3, s, s)
        h = t(b, width, s, s, grad=True)
        w1 = t(width, 3, 3, 3, grad=True)
        w2 = t(width, width, 3, 3, grad=True)
        w3 = t(1, width, 1, 1, grad=True)
        full = b * width * s * s * e
        for name, fn, moved in (
                (f"conv 3->{width} 3x3 fwd", lambda x=x, w1=w1: F.conv2d(x, w1, padding=1), full),
                (f"conv {width}->{width} 3x3 fwd", lambda h=h, w2=w2: F.conv2d(h, w2, padding=1), 2 * full),
                (f"conv {width}->1 1x1 fwd", lambda h=h, w3=w3: F.conv2d(h, w3), full)):
            out[f"{name} ({fmt_name})"] = (fn, moved)
        y2 = F.conv2d(h, w2, padding=1)
        g2 = torch.randn_like(y2)
        out[f"conv {width}->{width} 3x3 bwd: d input + d w ({fmt_name})"] = (
            lambda y2=y2, h=h, w2=w2, g2=g2: torch.autograd.grad(y2, [h, w2], g2, retain_graph=True), 3 * full)
        y1 = F.conv2d(x, w1, padding=1)
        g1 = torch.randn_like(y1)
        out[f"conv 3->{width} 3x3 bwd: d w ({fmt_name})"] = (
            lambda y1=y1, w1=w1, g1=g1: torch.autograd.grad(y1, [w1], g1, retain_graph=True), full)
        bn = torch.nn.BatchNorm2d(width).to(dev).train()
        out[f"batchnorm train fwd ({fmt_name})"] = (lambda h=h, bn=bn: bn(h.detach()), 3 * full)
        bias = torch.randn(width, device=dev, dtype=dt)
        out[f"conv bias add, broadcast [1,C,1,1] ({fmt_name})"] = (
            lambda h=h, bias=bias: h.detach() + bias.view(1, -1, 1, 1), 2 * full)
        if fmt_name == "nhwc":  # the same maths on the [N·H·W, C] view of a channels-last map
            flat = h.detach().permute(0, 2, 3, 1).reshape(-1, width)

            def bn_2d(flat: torch.Tensor = flat) -> torch.Tensor:
                var, mean = torch.var_mean(flat, dim=0, correction=0)
                s = torch.rsqrt(var.float() + 1e-5)
                return torch.addcmul((-mean.float() * s).to(dt), flat, s.to(dt))
            out["batchnorm train fwd as var_mean + addcmul on [NHW, C] (nhwc)"] = (bn_2d, 3 * full)
            out["var_mean over [NHW, C] (nhwc)"] = (lambda flat=flat: torch.var_mean(flat, dim=0), full)
            from egl.kernels.bn_stats import bn_stats
            from egl.maskers._bn_conv import _affine

            hd = h.detach()
            out["egl.kernels.bn_stats (nhwc)"] = (lambda hd=hd: bn_stats(hd), full)

            def bn_kernel(hd: torch.Tensor = hd, bn: torch.nn.BatchNorm2d = bn) -> torch.Tensor:
                with torch.no_grad():  # as inside bn_conv's forward
                    mean, var = bn_stats(hd)
                    return _affine(hd, bn.weight, bn.bias, mean, torch.rsqrt(var + bn.eps))
            out["batchnorm train fwd as bn_stats + one multiply-add (nhwc)"] = (bn_kernel, 3 * full)
            from egl.kernels.channel_affine import channel_affine, channel_affine_reference

            sc, sh = torch.randn(width, device=dev), torch.randn(width, device=dev)
            out["multiply-add: egl.kernels.channel_affine (nhwc)"] = (
                lambda hd=hd: channel_affine(hd, sc, sh), 2 * full)
            out["multiply-add: torch.addcmul, float32 [1,C,1,1] factors (nhwc)"] = (
                lambda hd=hd: channel_affine_reference(hd, sc, sh), 2 * full)
            from egl.kernels.bn_backward import bn_backward, bn_backward_reference

            gd = torch.randn_like(hd)
            mu, inv = torch.randn(width, device=dev), torch.rand(width, device=dev) + 0.5
            gam = torch.rand(width, device=dev) + 0.5
            out["batchnorm train bwd: native_batch_norm_backward (nhwc)"] = (
                lambda hd=hd, gd=gd: bn_backward_reference(gd, hd, gam, mu, inv), 3 * full)
            out["batchnorm train bwd: egl.kernels.bn_backward (nhwc)"] = (
                lambda hd=hd, gd=gd: bn_backward(gd, hd, gam, mu, inv), 3 * full)
            from egl.maskers import _bias_relu

            bias32 = torch.randn(width, device=dev)

            def torch_bias_relu(hd: torch.Tensor = hd) -> torch.Tensor:  # what a conv with bias + ReLU(inplace) do
                return torch.relu_(hd.clone().add_(bias32.to(dt).view(1, -1, 1, 1)))

            def egl_bias_relu(hd: torch.Tensor = hd) -> torch.Tensor:
                with torch.no_grad():
                    return _bias_relu.bias_relu(hd.clone(), bias32)
            out["conv bias add + ReLU: add_ then relu_, after a copy (nhwc)"] = (torch_bias_relu, 4 * full)
            out["conv bias add + ReLU: egl's one pass, after a copy (nhwc)"] = (egl_bias_relu, 4 * full)
            out["sum over [NHW, C] (nhwc)"] = (lambda flat=flat: flat.sum(0, dtype=torch.float32), full)
            out["copy (the bandwidth floor: read + write)"] = (lambda flat=flat: flat.clone(), 2 * full)
        # the classifier's input gradient over 2B images: the library's convolution backward, and
        # egl.kernels.subpixel_dgrad's stride-1 convolution + pixel shuffle; ResNet, ConvNeXt, ViT stems
        from egl.kernels.subpixel_dgrad import conv2d_input_grad

        for stem, c_out, k, st, pad in (("resnet 7x7/2", 64, 7, 2, 3), ("convnext 4x4/4", 96, 4, 4, 0),
                                         ("vit 16x16/16", 384, 16, 16, 0)):
            xs = t(2 * b, 3, s, s, grad=True)
            ws = t(c_out, 3, k, k)
            ys = F.conv2d(xs, ws, stride=st, padding=pad)
            gs = torch.randn_like(ys)
            moved = gs.numel() * e + xs.numel() * e
            out[f"stem {stem} d input, batch {2 * b} ({fmt_name})"] = (
                lambda ys=ys, xs=xs, gs=gs: torch.autograd.grad(ys, [xs], gs, retain_graph=True), moved)
            out[f"stem {stem} d input, sub-pixel, batch {2 * b} ({fmt_name})"] = (
                lambda gs=gs, ws=ws, st=st, pad=pad: conv2d_input_grad(gs, ws, (s, s), (st, st), (pad, pad)), moved)
        mp_in = t(2 * b, 64, s // 2, s // 2, grad=True)
        mp = F.max_pool2d(mp_in, 3, 2, 1)
        gm = torch.randn_like(mp)
        out[f"max_pool 3x3/2 bwd, batch {2 * b} ({fmt_name})"] = (
            lambda mp=mp, mp_in=mp_in, gm=gm: torch.autograd.grad(mp, [mp_in], gm, retain_graph=True),
            mp_in.numel() * e + gm.numel() * e)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cudnn-benchmark", action="store_true", help="also time with torch.backends.cudnn.benchmark")
    a = p.parse_args()
    dt = torch.bfloat16 if a.precision == "bf16" else torch.float32
    rows = []
    ops = cases(a.batch, a.size, a.device, dt)
    for bench in ((False, True) if a.device.startswith("cuda") and a.cudnn_benchmark else (False,)):
        torch.backends.cudnn.benchmark = bench  # cuDNN's own choice, then the fastest it finds by trying
        for name, (fn, moved) in ops.items():
            try:
                t = _time(fn, a.device, a.repeats)
            except Exception as e:  # noqa: BLE001 - a case that fails here is reported, not fatal
                print(f"  {name}: {type(e).__name__}: {str(e)[:100]}", flush=True)
                t = float("nan")
            rows.append({"op": name, "cudnn.benchmark": bench, "ms": 1000 * t, "GB/s": moved / t / 1e9})
    print(f"# masker-phase operations on {hardware()}: batch {a.batch} x {a.size}px, {a.precision}")
    print(table(rows, ["op", "cudnn.benchmark", "ms", "GB/s"]))


if __name__ == "__main__":
    main()
