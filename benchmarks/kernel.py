"""The fused Grad-CAM epilogue on a GPU: Triton kernels vs the unfused PyTorch path and torch.compile.

    python benchmarks/kernel.py                 # needs a CUDA GPU; prints "skipped" otherwise
    python benchmarks/kernel.py --sweep --json kernel.json

Sizes: batch 256, 512-2048 channels, 7x7 to 28x28 maps, 224 px output, fp32 and bf16
activations. Every case is first checked against a float64 reference (values and both
gradients, fresh random inputs, ``||out - ref|| / ||ref||``). Times are medians of
``triton.testing.do_bench`` (CUDA events, L2 flushed between calls: "eager", launch overhead
included) and of ``do_bench_cudagraph`` (the calls replayed from a CUDA graph: "kernel", the
device's time alone). Bandwidth (from the kernel time) counts the bytes
that must move: forward = activations read once + maps written once; backward = incoming
gradient read once + activations read once + their gradient written once. The card's peak is
measured in the same run (a 2 GiB device-to-device copy, bytes read + written).
``--sweep`` also times the Triton forward under other launch configurations.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, table  # noqa: E402

DEVICE = "cuda"
CASES = [(512, 7), (2048, 7), (1024, 14), (512, 28)]
SWEEP = [{}, {"reduce_tile": 4096, "reduce_warps": 4}, {"reduce_tile": 16384, "reduce_warps": 8, "programs_per_sm": 2},
         {"write": "gather", "write_warps": 4}, {"write_warps": 4, "fuse": "off"},  # (write tiles: three launches)
         {"write_rows": 64, "write_warps": 4, "fuse": "off"},
         {"write_rows": 16, "write_cols": 64, "fuse": "off"}, {"write_rows": 8, "write_cols": 128, "fuse": "off"},
         # the stats stage (one program a sample: 4 µs at 7x7, 15.6 µs at 28x28 on an H200): more in flight per step
         {"stats_warps": 8}, {"stats_block": 2048, "stats_warps": 8}, {"stats_block": 4096, "stats_warps": 16},
         {"reduce": "grouped"}, {"reduce": "grouped", "reduce_tile": 4096, "reduce_warps": 4},
         {"small_map_positions": 0},  # (the grouped sum at 7x7 with the larger maps' tile and warps)
         {"fuse": "off"}, {"fuse": "on"}, {"fuse": "on", "fuse_write_rows": 8}]  # three launches / one launch


def _bench(fn: Any) -> float:
    if not torch.cuda.is_available():  # smoke runs on CPU (TRITON_INTERPRET=1)
        import statistics
        import time

        ts = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=50, return_mode="median") / 1e3  # seconds


def _bench_graph(fn: Any) -> float:
    """Device time alone: the calls captured in a CUDA graph and replayed (no launch overhead)."""
    if not torch.cuda.is_available():
        return _bench(fn)
    from triton.testing import do_bench_cudagraph

    try:
        return do_bench_cudagraph(fn, rep=20, return_mode="median") / 1e3
    except Exception as e:  # noqa: BLE001 - a variant that cannot be captured gets no kernel time
        print(f"  (graph capture failed: {type(e).__name__}: {str(e)[:80]})", flush=True)
        torch.cuda.synchronize()
        return float("nan")


def copy_bandwidth() -> float:
    """Bytes read + written per second by a large device-to-device copy (the card's practical peak)."""
    x = torch.empty(2**29 if torch.cuda.is_available() else 2**20, device=DEVICE, dtype=torch.float32).normal_()
    y = torch.empty_like(x)
    t = _bench(lambda: y.copy_(x))
    return 2 * x.numel() * 4 / t


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp_min(1e-300))


def check(acts: torch.Tensor, w: torch.Tensor, size: tuple[int, int], scale: float) -> dict[str, float]:
    """Relative errors of the Triton maps and gradients against a float64 reference."""
    from egl.kernels import cam_epilogue, cam_epilogue_reference

    g = torch.randn(acts.shape[0], 1, *size, device=acts.device)
    a1, w1 = acts.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = cam_epilogue(a1, w1, size, scale=scale, backend="triton")
    ga, gw = torch.autograd.grad(out, [a1, w1], g)
    a2, w2 = acts.double().requires_grad_(True), w.double().requires_grad_(True)
    ref = cam_epilogue_reference(a2, w2, size, scale=scale)
    ra, rw = torch.autograd.grad(ref, [a2, w2], g.double())
    res = {"err maps": _rel(out, ref), "err dA": _rel(ga, ra), "err dW": _rel(gw, rw),
           "nan": float(not (torch.isfinite(out).all() and torch.isfinite(ga).all() and torch.isfinite(gw).all()))}
    from egl.explainers._postprocess import REL_EPS
    from egl.kernels import _cam_triton

    for name, cfg in (("dot", {"reduce": "dot"}), ("bmm", {"reduce": "bmm"}), ("grouped", {"reduce": "grouped"}),
                      ("gather", {"write": "gather"})):
        try:
            res[f"err maps ({name})"] = _rel(_cam_triton.forward(acts, w, size, scale, True, True, REL_EPS,
                                                                 config=cfg)[0], ref)
        except Exception as e:  # noqa: BLE001 - reported in the table, not fatal
            print(f"  {cfg}: {type(e).__name__}: {str(e)[:100]}", flush=True)
            res[f"err maps ({name})"] = float("nan")
    return res


def _floors(acts: torch.Tensor, size: tuple[int, int], fwd_bytes: int, peak: float) -> dict[str, float]:
    """What moving the forward's bytes costs without the epilogue: the activations read by one
    float32 sum (a reduction that reads every element once), the maps written by ``fill_``, and
    the share of the copy bandwidth the two make back to back: the best a forward in two launches
    (read, then write) could reach if each ran as fast as these."""
    out = torch.empty(acts.shape[0], 1, *size, device=acts.device, dtype=torch.float32)
    read = _bench_graph(lambda: acts.sum(dtype=torch.float32))
    write = _bench_graph(lambda: out.fill_(0.5))
    return {"read acts us": 1e6 * read, "write maps us": 1e6 * write, "read + write us": 1e6 * (read + write),
            "floor of peak": fwd_bytes / (read + write) / peak}


def _stages(case: dict[str, Any], acts: torch.Tensor, w: torch.Tensor, g: torch.Tensor, size: tuple[int, int],
            scale: float, peak: float) -> list[dict[str, Any]]:
    """Device time of each launch of the forward and backward, with the bytes each must move."""
    from egl.explainers._postprocess import REL_EPS
    from egl.kernels import _cam_triton, _cam_triton_backward
    from egl.kernels.cam_epilogue import _input_grads_torch

    cfg = dict(_cam_triton.CONFIG)
    h, wd = acts.shape[-2:]
    part = _cam_triton.reduce_stage(acts, w, cfg)
    low, x_rows, stats, argext = _cam_triton.stats_stage(part, (h, wd), size, scale, True, True, cfg)
    gather = {**cfg, "write": "gather"}
    d = _cam_triton_backward.grad_low(g, low, stats, argext, (h, wd), size, scale, True, True, REL_EPS)
    a_bytes = acts.numel() * acts.element_size()
    out_bytes = g.numel() * 4
    fns = {f"reduce ({impl})": (lambda impl=impl: _cam_triton.reduce_stage(acts, w, {**cfg, "reduce": impl}), a_bytes)
           for impl in ("loop", "dot", "bmm", "grouped")}
    fns["stats (separable: + rows)"] = (lambda: _cam_triton.stats_stage(part, (h, wd), size, scale, True, True, cfg),
                                        part.numel() * 4)
    fns["stats (gather)"] = (lambda: _cam_triton.stats_stage(part, (h, wd), size, scale, True, True, gather),
                             part.numel() * 4)
    fns["write (separable)"] = (lambda: _cam_triton.write_stage(low, x_rows, stats, (h, wd), size, True, REL_EPS, cfg),
                                out_bytes)
    fns["write (gather)"] = (lambda: _cam_triton.write_stage(low, None, stats, (h, wd), size, True, REL_EPS, gather),
                             out_bytes)
    fns["bwd: transposed upsampling + finish"] = (lambda: _cam_triton_backward.grad_low(
        g, low, stats, argext, (h, wd), size, scale, True, True, REL_EPS), out_bytes)
    fns["bwd: d acts + d w, two PyTorch ops (default)"] = (lambda: _input_grads_torch(acts, w, d, (True, True)),
                                                          2 * a_bytes)
    fns["bwd: d acts + d w, one pass (triton)"] = (lambda: _cam_triton_backward.input_grads(
        acts, w, d, (True, True), cfg), 2 * a_bytes)
    fns["bwd: d acts + d w, one pass (grouped; 16-bit)"] = (lambda: _cam_triton_backward.input_grads(
        acts, w, d, (True, True), {**cfg, "grads": "grouped"}), 2 * a_bytes)
    rows = []
    for k, (f, moved) in fns.items():
        try:
            t = _bench_graph(f)
        except Exception as e:  # noqa: BLE001 - a variant that does not build here is reported, not fatal
            print(f"  {k}: {type(e).__name__}: {str(e)[:100]}", flush=True)
            t = float("nan")
        rows.append({**case, "stage": k, "kernel us": 1e6 * t, "GB/s": moved / t / 1e9, "of peak": moved / t / peak})
    return rows


def _with_config(cfg: dict[str, Any], fn: Any) -> Any:
    """``fn()`` with ``_cam_triton.CONFIG`` updated by ``cfg`` for the call (the autograd path reads it)."""
    from egl.kernels import _cam_triton

    saved = dict(_cam_triton.CONFIG)
    _cam_triton.CONFIG.update(cfg)
    try:
        return fn()
    finally:
        _cam_triton.CONFIG.clear()
        _cam_triton.CONFIG.update(saved)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--out", type=int, default=224)
    p.add_argument("--sweep", action="store_true", help="also time other launch configurations")
    p.add_argument("--stages", action="store_true", help="also time every launch on its own")
    p.add_argument("--sweep-only", action="store_true",
                   help="time the --sweep configurations alone (not the peers, the reduce= variants, fwd+bwd)")
    p.add_argument("--configs", default=None,
                   help="with --sweep(-only): the configurations to time instead of the built-in list, as JSON dicts "
                        "separated by ';' (e.g. '{};{\"small_map_positions\": 0}')")
    p.add_argument("--compile-dtypes", default="bfloat16,float32",
                   help="dtypes that get the torch.compile variant ('' for none; each shape compiles once)")
    p.add_argument("--cases", default=None, help="C:map,... (default 512:7,2048:7,1024:14,512:28)")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # CPU + TRITON_INTERPRET=1
    p.add_argument("--json", default=None)
    a = p.parse_args()
    global DEVICE
    if not torch.cuda.is_available() and not a.smoke:
        print("kernel benchmark skipped: no CUDA device")
        return
    DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cases = [tuple(int(v) for v in cs.split(":")) for cs in a.cases.split(",")] if a.cases else CASES
    from egl.explainers._postprocess import REL_EPS
    from egl.kernels import _cam_triton, cam_epilogue, cam_epilogue_reference

    peak = copy_bandwidth()
    print(f"# fused epilogue on {hardware()}; measured copy bandwidth {peak / 1e9:.0f} GB/s", flush=True)
    compiled = None if a.smoke or not a.compile_dtypes else torch.compile(cam_epilogue_reference, dynamic=False)
    size = (a.out, a.out)
    rows: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    stage_rows: list[dict[str, Any]] = []
    floor_rows: list[dict[str, Any]] = []
    for dtype in (torch.bfloat16, torch.float32):
        for c, hw in cases:
            torch.manual_seed(c + hw)
            acts = torch.randn(a.batch, c, hw, hw, device=DEVICE).to(dtype)
            w = torch.randn(a.batch, c, device=DEVICE)
            scale = 1.0 / hw**2
            case = {"dtype": str(dtype).replace("torch.", ""), "C": c, "map": f"{hw}x{hw}"}
            checks.append({**case, **check(acts, w, size, scale)})
            fwd_bytes = acts.numel() * acts.element_size() + a.batch * a.out * a.out * 4
            bwd_bytes = a.batch * a.out * a.out * 4 + 2 * acts.numel() * acts.element_size()
            fwd: dict[str, Any] = {
                "torch": lambda: cam_epilogue_reference(acts, w, size, scale=scale),
                "triton": lambda: cam_epilogue(acts, w, size, scale=scale, backend="triton")}
            if compiled is not None and case["dtype"] in a.compile_dtypes.split(","):
                fwd["torch.compile"] = lambda: compiled(acts, w, size, scale=scale)
            for impl in ("dot", "bmm", "grouped"):
                fwd[f"triton reduce={impl}"] = lambda impl=impl: _cam_triton.forward(
                    acts, w, size, scale, True, True, REL_EPS, config={"reduce": impl})
            ar, wr = acts.clone().requires_grad_(True), w.clone().requires_grad_(True)
            g = torch.randn(a.batch, 1, *size, device=DEVICE)
            both = {f"{k} fwd+bwd": (lambda k=k: torch.autograd.grad(
                cam_epilogue(ar, wr, size, scale=scale, backend=k), [ar, wr], g)) for k in ("torch", "triton")}
            both["triton grads=triton fwd+bwd"] = lambda: _with_config(
                {"grads": "triton"}, lambda: torch.autograd.grad(
                    cam_epilogue(ar, wr, size, scale=scale, backend="triton"), [ar, wr], g))
            both["triton grads=grouped fwd+bwd"] = lambda: _with_config(
                {"grads": "grouped", "reduce": "grouped"}, lambda: torch.autograd.grad(
                    cam_epilogue(ar, wr, size, scale=scale, backend="triton"), [ar, wr], g))
            if a.sweep_only:
                fwd, both = {}, {}
            sweep = {}
            if a.sweep or a.sweep_only:
                for cfg in [json.loads(t) for t in a.configs.split(";")] if a.configs else SWEEP:
                    name = "triton " + (",".join(f"{k}={v}" for k, v in cfg.items()) or "forward() default")
                    sweep[name] = lambda cfg=cfg: _cam_triton.forward(acts, w, size, scale, True, True, REL_EPS,
                                                                      config=cfg)
            default = _cam_triton.forward(acts, w, size, scale, True, True, REL_EPS)
            for group, fns, moved in (("fwd", fwd, fwd_bytes), ("fwd+bwd", both, fwd_bytes + bwd_bytes),
                                      ("fwd", sweep, fwd_bytes)):
                for k, f in fns.items():
                    eager = _bench(f)
                    kern = _bench_graph(f)
                    rows.append({**case, "pass": group, "variant": k.replace(" fwd+bwd", ""), "eager us": 1e6 * eager,
                                 "kernel us": 1e6 * kern, "GB/s": moved / kern / 1e9, "of peak": moved / kern / peak})
                    if fns is sweep:  # another launch configuration computes the same maps, range and positions
                        got = f()  # (maps, low-resolution map, range; then the range's positions)
                        rows[-1]["max diff vs default"] = max(float((g - d).abs().max())
                                                              for g, d in zip(got[:3], default[:3]) if d.numel())
                        rows[-1]["same positions"] = bool(torch.equal(got[3], default[3]))
            floor_rows.append({**case, **_floors(acts, size, fwd_bytes, peak)})
            if a.stages:
                stage_rows.extend(_stages(case, acts, w, g, size, scale, peak))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(f"  done {case}", flush=True)
    print("\n## correctness (relative to float64)")
    print(table(checks, ["dtype", "C", "map", "err maps", "err dA", "err dW", "nan", "err maps (dot)",
                         "err maps (bmm)", "err maps (grouped)", "err maps (gather)"]))
    print(f"\n## time and bandwidth (peak = {peak / 1e9:.0f} GB/s measured copy)")
    print(table(rows, ["dtype", "C", "map", "pass", "variant", "eager us", "kernel us", "GB/s", "of peak",
                       "max diff vs default", "same positions"]))
    print("\n## floors: the forward's bytes moved by the simplest kernels (no epilogue maths)")
    print(table(floor_rows, ["dtype", "C", "map", "read acts us", "write maps us", "read + write us",
                             "floor of peak"]))
    if stage_rows:
        print("\n## each launch on its own (kernel time; bytes it must move)")
        print(table(stage_rows, ["dtype", "C", "map", "stage", "kernel us", "GB/s", "of peak"]))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"hardware": hardware(), "peak_gbs": peak / 1e9, "checks": checks, "rows": rows,
                       "stages": stage_rows, "floors": floor_rows}, f, indent=1)


if __name__ == "__main__":
    main()
