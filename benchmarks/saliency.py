"""Saliency throughput and memory: egl against captum, pytorch-grad-cam and torch-cam.

    python benchmarks/saliency.py                      # full: 4 models x (32x224, 64x64)
    python benchmarks/saliency.py --quick              # resnet18 only, fewer repeats
    python benchmarks/saliency.py --json out.json
    python benchmarks/saliency.py --settings 32x224,256x224 --inline-memory   # on a GPU

Every variant computes Grad-CAM of given targets at the last stage, upsampled to the input:
``forward`` is a plain ``no_grad`` forward (the floor); ``egl`` takes its fastest exact path
(closed form for GAP+linear heads); ``egl_autograd`` forces autograd; on CUDA ``egl_graph`` is
egl's call replayed as one CUDA graph (:class:`egl.explainers.GraphedExplainer`, targets as a
list: no device read; it copies the batch into the graph's buffer and the maps out of it) and
``forward_graph`` the forward replayed likewise, with neither copy (the floor of a replayed
call); their intermediates live in the graphs' memory pools, reserved between calls, which a
replay's peak of allocated memory does not show: the line before each table gives each pool's size. Times are medians of
round-robin repeats in one process, each repeat the mean of ``--inner`` back-to-back calls
(default 10 on a GPU: the steady state of a loop, where a small batch is bound by the host
launching kernels; 1 on the CPU); peak memory is measured with each variant in its own
process (``--inline-memory``: in the timing process, after a warm-up call; exact on a GPU,
where the caching allocator counts every byte, and much faster to run). Peers come from the ``bench`` extra (``pip install egl[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _common import hardware, peak_memory_mb, round_robin, run_isolated, table  # noqa: E402

MODELS = {"resnet18": "layer4", "resnet50": "layer4", "convnext_tiny": "stages.3",
          "vit_small_patch16_224": "blocks.11.norm1"}
SETTINGS = [(32, 224), (64, 64)]


def _model(name: str, size: int) -> torch.nn.Module:
    import timm

    kw = {"img_size": size} if name.startswith("vit") else {}
    return timm.create_model(name, pretrained=False, num_classes=10, **kw).eval()


def _vit_reshape(t: torch.Tensor) -> torch.Tensor:
    n = int((t.shape[1] - 1) ** 0.5)
    return t[:, 1:].reshape(t.shape[0], n, n, t.shape[2]).permute(0, 3, 1, 2)


def variants(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], Any]]:
    from egl.explainers import GradCAM

    layer = model.get_submodule(MODELS[name])
    size = x.shape[-2:]
    egl_cam, egl_auto = GradCAM(model), GradCAM(model, path="autograd")
    out: dict[str, Callable[[], Any]] = {}

    def forward() -> Any:
        with torch.no_grad():
            return model(x)

    out["forward"] = forward
    out["egl"] = lambda: egl_cam(x, y)
    if x.is_cuda:  # the whole call replayed as one CUDA graph, beside a forward replayed likewise
        from egl.explainers import GraphedExplainer

        egl_graph, y_host = GraphedExplainer(GradCAM(model)), y.tolist()
        # targets from the host: checked there, no read of the device after the replay (device
        # targets would add one synchronisation a call, as they do to "egl")
        graphs = {"egl_graph": lambda: egl_graph(x, y_host), "forward_graph": _graphed_forward(model, x)}
        try:  # captured here: a capture that fails costs these two rows, not the benchmark
            pools = {k: _pool_mb(f) for k, f in graphs.items()}
            diff = float((graphs["egl_graph"]() - egl_cam(x, y)).abs().max())
            print(f"# {name}: egl_graph captured; max |egl_graph - egl| = {diff:.3g}; memory the graphs' pools"
                  f" hold between calls: egl_graph {pools['egl_graph']:.1f} MB,"
                  f" forward_graph {pools['forward_graph']:.1f} MB")
            out.update(graphs)
        except Exception as e:
            print(f"# {name}: CUDA-graph variants left out: {type(e).__name__}: {e}")
    if not name.startswith("vit"):
        out["egl_autograd"] = lambda: egl_auto(x, y)
    try:
        from captum.attr import LayerAttribution, LayerGradCam

        if not name.startswith("vit"):
            lgc = LayerGradCam(model, layer)
            out["captum"] = lambda: LayerAttribution.interpolate(
                lgc.attribute(x, target=y, relu_attributions=True), tuple(size), "bilinear")
    except ImportError:
        pass
    try:
        from pytorch_grad_cam import GradCAM as PGC
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(t)) for t in y]

        def pytorch_grad_cam() -> Any:
            # Built per call, hooks removed on exit: its forward hooks copy the target layer's output
            # to the host on every forward of the model, so one kept alive would slow (and sync) every
            # other variant of this shared model, the no_grad forward included.
            with PGC(model=model, target_layers=[layer],
                     reshape_transform=_vit_reshape if name.startswith("vit") else None) as pgc:
                return pgc(input_tensor=x, targets=targets)
        out["pytorch_grad_cam"] = pytorch_grad_cam
    except ImportError:
        pass
    try:
        from torchcam.methods import GradCAM as TCGradCAM

        if not name.startswith("vit"):
            def torchcam() -> Any:
                with TCGradCAM(model, target_layer=MODELS[name]) as extractor:
                    scores = model(x)
                    maps = extractor(y.tolist(), scores)[0]
                return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False)
            out["torchcam"] = torchcam
    except ImportError:
        pass
    return out


def _pool_mb(capture: Callable[[], Any]) -> float:
    """Memory (MB) a first call that captures a CUDA graph leaves reserved: the graph's private pool,
    held for as long as the graph lives (the warm-up's own blocks are given back first)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    capture()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return (torch.cuda.memory_reserved() - before) / 2**20


def _graphed_forward(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """The ``no_grad`` forward captured in a CUDA graph (the floor of a replayed call): warmed up
    on a side stream, captured on first use, replayed after."""
    graph: list[Any] = []

    def run() -> Any:
        if not graph:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(3):
                    model(x)
            torch.cuda.current_stream().wait_stream(stream)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g), torch.no_grad():
                out = model(x)
            graph.extend([g, out])
        graph[0].replay()
        return graph[1]
    return run


def agreement(name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Max |egl - captum| / max|captum| on raw (unnormalised) maps; None where captum does not apply."""
    if name.startswith("vit"):
        return None
    from captum.attr import LayerAttribution, LayerGradCam

    from egl.explainers import grad_cam

    ref = LayerAttribution.interpolate(LayerGradCam(model, model.get_submodule(MODELS[name])).attribute(
        x, target=y, relu_attributions=True), tuple(x.shape[-2:]), "bilinear").detach()
    ours = grad_cam(model, x, y, normalize=False)
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _inputs(name: str, batch: int, size: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = _model(name, size).to(dev)
    return model, torch.randn(batch, 3, size, size, device=dev), torch.randint(0, 10, (batch,), device=dev)


def one(name: str, variant: str, batch: int, size: int) -> None:
    """Child process: peak and retained memory of one variant (prints one JSON line)."""
    model, x, y = _inputs(name, batch, size)
    fn = variants(name, model, x, y)[variant]
    if torch.cuda.is_available():
        fn()  # warm-up (cuDNN autotuning, lazy init); the caching allocator's peak is reset after it
    # On CPU no warm-up: the resident-set high-water mark cannot see memory the allocator reuses.
    peak, kept = peak_memory_mb(fn)
    print(json.dumps({"peak_mb": peak, "retained_mb": kept}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="resnet18 only, 3 repeats")
    p.add_argument("--models", default=None, help="comma list (default: all four)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--inner", type=int, default=None,
                   help="back-to-back calls timed together in each round (default: 10 on a GPU, 1 on the CPU)")
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--inline-memory", action="store_true", help="measure memory in this process (GPU)")
    p.add_argument("--settings", default=None, help="BATCHxSIZE,... (default 32x224,64x64)")
    p.add_argument("--json", default=None)
    p.add_argument("--one", nargs=4, metavar=("MODEL", "VARIANT", "BATCH", "SIZE"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        one(a.one[0], a.one[1], int(a.one[2]), int(a.one[3]))
        return
    models = a.models.split(",") if a.models else (["resnet18"] if a.quick else list(MODELS))
    repeats = 3 if a.quick else a.repeats
    inner = a.inner if a.inner is not None else 10 if torch.cuda.is_available() else 1
    print(f"# saliency benchmark on {hardware()}")
    results = []
    settings = [tuple(int(v) for v in st.split("x")) for st in a.settings.split(",")] if a.settings else SETTINGS
    for name in models:
        for batch, size in settings:
            model, x, y = _inputs(name, batch, size)
            fns = variants(name, model, x, y)
            times = round_robin(fns, repeats, warmup=3 if torch.cuda.is_available() else 1, inner=inner)
            agree = agreement(name, model, x, y)
            rows = []
            for v, t in times.items():
                row: dict[str, Any] = {"model": name, "input": f"{batch}x{size}", "variant": v,
                                       "ms": 1000 * t, "img/s": batch / t, "x forward": t / times["forward"]}
                if v not in ("forward",):
                    row["egl speed-up"] = t / times["egl"]
                if a.inline_memory:
                    fns[v]()
                    peak, kept = peak_memory_mb(fns[v])
                    row["peak MB"], row["retained MB"] = peak, kept
                elif not a.no_memory:
                    mem = run_isolated(__file__, ["--one", name, v, str(batch), str(size)])
                    row["peak MB"] = mem.get("peak_mb")
                    row["retained MB"] = mem.get("retained_mb")
                rows.append(row)
            fwd_peak = next((r.get("peak MB") for r in rows if r["variant"] == "forward"), None)
            for r in rows:
                if fwd_peak and isinstance(r.get("peak MB"), float):
                    r["x fwd mem"] = r["peak MB"] / fwd_peak
            print(f"\n## {name}, batch {batch} x {size}px  (egl vs captum max rel. diff: {agree})")
            print(table(rows, ["variant", "ms", "img/s", "x forward", "egl speed-up", "peak MB", "x fwd mem",
                               "retained MB"]))
            results += rows
            del model, x, y, fns
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"hardware": hardware(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
