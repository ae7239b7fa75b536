"""Instructions per element of the fused Grad-CAM epilogue's kernels, compiled for a GPU on any machine.

    python benchmarks/kernel_sass.py                       # sm_90, the four sizes of kernel.py
    python benchmarks/kernel_sass.py --arch 80 --json sass.json

No GPU needed: the launcher (:func:`egl.kernels._cam_triton.forward`) runs on small CPU tensors
(batch ``--batch``, channels split for ``--sms`` multiprocessors) with Triton's launch
intercepted, and every kernel is compiled with exactly
the arguments, constexprs and warps the real call passes, specialised by Triton's own binder as
its launcher does (a pointer 16-byte aligned or not by its address, integers divisible by 16 or
equal to 1), then disassembled (Triton's bundled ptxas and nvdisasm).
Counts are static SASS instructions per thread, divided by the elements a thread handles:
output pixels for ``write``, activation elements per loop iteration for ``reduce`` and the
backward's ``input_grads`` (the loop body only; ``input_grads`` reads and writes each element). When a kernel is bound by instruction issue, not memory, this is what sets its
time. "issue ceiling" is the fraction of the card's copy bandwidth a kernel could reach if its
multiprocessors issued one warp instruction per scheduler every cycle (4 schedulers of 32 lanes;
H200 defaults: 132 multiprocessors at 1.98 GHz, 4275 GB/s): below about 2 (200%), issue limits
it. On the H200 the gather ``write`` (ceiling 80%) stored at 45% of the copy bandwidth whatever
the map size, the bf16 channel sum (ceiling 91-95%) read at 39-40%: both about half their
ceiling, as stalls keep real issue rates near half the peak (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

os.environ["TRITON_INTERPRET"] = "0"  # compile real kernels: the interpreter has no SASS

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from _common import table  # noqa: E402

CASES = [(512, 7), (2048, 7), (1024, 14), (512, 28)]
COLUMNS = ["dtype", "C", "map", "config", "kernel", "tile", "warps", "instr/element", "issue ceiling",
           "elements/thread", "instructions", "vector loads", "scalar loads", "vector stores"]


def launches(c: int, side: int, out: int, dtype: torch.dtype, config: dict[str, Any],
             batch: int = 2, sms: int = 132) -> list[dict[str, Any]]:
    """The kernel launches of one forward call and of the backward's one-pass input gradients:
    ``{"fn", "args", "kwargs"}`` each."""
    from triton.runtime.jit import JITFunction

    from egl.explainers._postprocess import REL_EPS
    from egl.kernels import _cam_triton, _cam_triton_backward

    seen: list[dict[str, Any]] = []

    def record(self: JITFunction, *args: Any, grid: Any = None, warmup: bool = False, **kw: Any) -> None:
        seen.append({"fn": self, "args": args, "kwargs": kw})

    real, real_sms = JITFunction.run, _cam_triton._sm_count
    JITFunction.run = record  # type: ignore[method-assign]
    _cam_triton._sm_count = lambda device: sms  # split channels as on the GPU (the CPU reports 4)
    try:
        acts = torch.zeros(batch, c, side, side, dtype=dtype)
        _cam_triton.forward(acts, torch.zeros(batch, c), (out, out), 1.0, True, True, REL_EPS, config)
        if hasattr(_cam_triton_backward, "input_grads"):  # (absent before 2026-11-26: older commits)
            _cam_triton_backward.input_grads(acts, torch.zeros(batch, c), torch.zeros(batch, side * side), (True, True),
                                             {**_cam_triton.CONFIG, **(config or {})})
    finally:
        JITFunction.run = real  # type: ignore[method-assign]
        _cam_triton._sm_count = real_sms
    return seen


def disassemble(launch: dict[str, Any], arch: int) -> list[str]:
    """SASS instruction lines of one launch, compiled for ``sm_<arch>`` as Triton's launcher would
    (its own binder: pointer alignment from the tensors' addresses, integers divisible by 16 or
    equal to 1 specialised)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = launch["fn"]
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    kwargs = {**launch["kwargs"], "debug": False, "instrumentation_mode": knobs.compilation.instrumentation_mode}
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*launch["args"], **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    return [line.split("\t", 1)[-1].strip() if "\t" in line else line.strip()
            for line in kernel.asm["sass"].splitlines() if line.strip()]


def _ops(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        if line.endswith(":") or line.startswith(("Function", ".")):
            continue
        op = re.sub(r"^@!?U?P\w+\s+", "", line).split()[0].rstrip(";")
        if op not in ("NOP", "EXIT") and not op.startswith("BRA"):
            out.append(op)
    return out


def loop_body(lines: list[str]) -> list[str]:
    """The instructions of the hot loop: of the innermost backward-branching loops (those that
    contain no other), the one with the most global memory instructions (empty when none)."""
    labels = {line[:-1]: i for i, line in enumerate(lines) if line.endswith(":")}
    loops = []
    for j, line in enumerate(lines):
        m = re.search(r"BRA\s+`?\(?\.?(\w+)", line)
        if m and m.group(1) in labels and labels[m.group(1)] < j:
            body = _ops(lines[labels[m.group(1)] + 1: j + 1])
            if body:  # (never the empty trap after EXIT, which branches to itself)
                loops.append((labels[m.group(1)], j, body))
    inner = [lp for lp in loops if not any(lp[0] <= o[0] and o[1] <= lp[1] and o != lp for o in loops)]
    if not inner:
        return []
    return max(inner, key=lambda lp: (sum(o.startswith(("LDG", "STG")) for o in lp[2]), -len(lp[2])))[2]


def count(launch: dict[str, Any], arch: int) -> dict[str, Any]:
    lines = disassemble(launch, arch)
    ops = _ops(lines)
    ce, warps = launch["kwargs"], launch["kwargs"].get("num_warps", 4)
    threads = 32 * warps
    name = launch["fn"].__name__
    row: dict[str, Any] = {"kernel": name, "warps": warps, "instructions": len(ops),
                           "vector loads": sum(o.startswith("LDG") and o.endswith((".64", ".128")) for o in ops),
                           "scalar loads": sum(o in ("LDG.E", "LDG.E.U16", "LDG.E.16") for o in ops),
                           "vector stores": sum(o.startswith("STG") and o.endswith((".64", ".128")) for o in ops)}
    if name.startswith("write"):
        per = ce["BY"] * ce["BX"] / threads
        row.update({"tile": f"{ce['BY']}x{ce['BX']}", "elements/thread": per, "instr/element": len(ops) / per})
    elif name.startswith(("reduce", "input_grads")):
        body = loop_body(lines)
        rows = ce.get("BLOCK_C", ce.get("BLOCK_R"))  # (grouped: rows of G channels)
        per = rows * ce["BLOCK_P"] / threads
        row.update({"tile": f"{rows}x{ce['BLOCK_P']}", "elements/thread": per,
                    "instr/element": len(body) / per if body else float("nan"),
                    "loop loads": sum(o.startswith("LDG") for o in body)})
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (90: H100/H200)")
    p.add_argument("--out", type=int, default=224)
    p.add_argument("--batch", type=int, default=256, help="batch of the (CPU) tensors: buffer offsets set alignment")
    p.add_argument("--cases", default=None, help="C:map,... (default 512:7,2048:7,1024:14,512:28)")
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--configs", default='{};{"write": "gather", "write_warps": 4}',
                   help="';'-separated JSON overrides of egl.kernels._cam_triton.CONFIG")
    p.add_argument("--sms", type=int, default=132, help="multiprocessors (H200: 132)")
    p.add_argument("--clock-ghz", type=float, default=1.98, help="SM clock (H200: 1.98)")
    p.add_argument("--bandwidth-gbs", type=float, default=4275.0, help="copy bandwidth, read + write (H200: 4275)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    bytes_per_cycle = a.bandwidth_gbs * 1e9 / a.sms / (a.clock_ghz * 1e9)  # per multiprocessor
    import triton

    cases = CASES if a.cases is None else [tuple(int(v) for v in s.split(":")) for s in a.cases.split(",")]
    rows = []
    for dname in a.dtypes.split(","):
        for c, side in cases:
            for cfg_text in a.configs.split(";"):
                cfg = json.loads(cfg_text)
                for launch in launches(c, side, a.out, getattr(torch, dname), cfg, a.batch, a.sms):
                    row = count(launch, a.arch)  # (stats: compiled and counted, no per-element figure)
                    if "instr/element" in row:  # write: 4-byte pixels; others: activation elements
                        size = 4 if row["kernel"].startswith("write") else getattr(torch, dname).itemsize
                        size *= 2 if row["kernel"].startswith("input_grads") else 1  # read + written
                        row["issue ceiling"] = 4 * 32 / (row["instr/element"] * bytes_per_cycle / size)
                    rows.append({"dtype": dname, "C": c, "map": f"{side}x{side}", "config": cfg_text, **row})
                    print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    print(f"\nsm_{a.arch}, Triton {triton.__version__}, torch {torch.__version__}, launches at batch {a.batch}; "
          "static SASS counts (write: per output pixel; reduce, input_grads: per activation element, loop body)")
    print(table(rows, COLUMNS))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"arch": a.arch, "triton": triton.__version__, "batch": a.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
