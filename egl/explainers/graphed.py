"""An explainer's whole call replayed as one CUDA graph: no per-kernel launch cost on the host.

On a GPU a small batch is bound by the host launching kernels: resnet18's ``no_grad`` forward of
64 images at 64 x 64 px takes 1.6 ms on an H200 whatever the device does, and an explainer's own
launches add to it (the backward through a ViT's last block is launched op by op by autograd;
docs/performance.md). :class:`GraphedExplainer` captures one call per input signature in a
:class:`torch.cuda.CUDAGraph` (Nvidia's CUDA Graphs; PyTorch's ``torch.cuda.graph``) and then
replays it: every kernel of the call, forward, gradient and epilogue, launched at once.

What a replay assumes, and how the wrapper keeps it true:

* The same shapes, dtype, layout, device, autocast state, modules' train/eval modes, explainer
  settings and kind of target (given or predicted): each combination has its own graph (the
  least recently used dropped past ``max_graphs``). Streams, captures and replays are made on
  the input's device, whatever the current one.
* The same parameter and buffer *storage*: a graph reads the memory it was captured with. In-place
  updates (an optimiser step, ``load_state_dict``) are seen by the next replay (autocast's cache
  of cast weights is off inside the capture, so a replay casts the parameters themselves); a
  model moved or given new tensors (``model.to(...)``, ``load_state_dict(assign=True)``) is
  noticed by the storage addresses, checked every call, and captured again. egl's cached device
  tables that the call reads are held by the graph.
* Targets in a device buffer: every call's targets are copied there, and checked against the
  number of classes as the explainer checks them (host targets without a device read; device
  targets with one read after the replay, raising before anything is returned).
* Python does not run during a replay: hooks the user adds to the model afterwards do not fire,
  and the explainer's Python-side attributes (``last_path``) keep the captured call's values.

Off CUDA, inside a capture the caller is making, and under a training step's inner loss scale
(:mod:`egl._amp`: it changes every step) the call is the explainer's own, eager. One stream and
one thread: concurrent calls race on the graphs' buffers.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor

from egl import _amp
from egl._check import check_choice, check_flag, check_int, fail
from egl._deferred import deferred_checks
from egl.explainers._targets import Targets, check_target_range, targets
from egl.explainers.base import Explainer, Explanation
from egl.kernels.cam_epilogue import capturing  # (a caller's own capture: the call is recorded eagerly into it)

__all__ = ["GraphedExplainer", "GRAPH_DEVICE_TYPES"]

FN = "egl.explainers.GraphedExplainer"

#: Device types whose calls are captured (tests add ``"cpu"`` with a stand-in for the capture).
GRAPH_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


class _Graph(NamedTuple):
    replay: Callable[[], None]
    x: Tensor  # the input buffer the graph reads
    target: Tensor | None  # the target buffer (None: the predicted class)
    out: Explanation  # the output buffers the graph writes
    num_classes: int
    storage: tuple[int, ...]  # the model's parameter and buffer addresses at capture
    constants: tuple[Any, ...]  # egl's cached device tables at capture, kept alive: the graph reads them


def warm_up(fn: Callable[[], Any], n: int) -> None:
    """Run ``fn`` ``n`` times on a side stream (PyTorch's recipe before a capture: lazy
    initialisations and autotuning happen outside the graph)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(n):
            fn()
    torch.cuda.current_stream().wait_stream(stream)


def capture(fn: Callable[[], Explanation], pool: Any,
            mode: str = "global") -> tuple[Callable[[], None], Explanation]:
    """Capture ``fn``'s kernels in a CUDA graph that allocates from ``pool`` (``mode``: CUDA's
    capture error mode). Returns the graph's ``replay`` and ``fn``'s outputs, which every replay
    rewrites in place."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode=mode):
        out = fn()
    return graph.replay, out


def new_pool() -> Any:
    """A memory pool for the graphs of one wrapper: one replays at a time, so they may share it."""
    return torch.cuda.graph_pool_handle()


class GraphedExplainer(Explainer):
    """Any explainer's inference call, captured once per input signature and replayed after.

    Args:
        explainer: the explainer to replay (:class:`egl.explainers.GradCAM`, ``InputGradient`` or a
            plugin's; its call must make no host read once its targets are checked: see
            ``benchmarks/sync_check.py``).
        warmup: eager calls on a side stream before a capture (3, PyTorch's advice; at least 1:
            it checks the first targets and learns the number of classes).
        clone: return copies of the graph's output buffers (True, default), or the buffers
            themselves (False: no copy, but the next call overwrites what the last returned).
        max_graphs: graphs kept (8); the least recently used is dropped past it.
        capture_error_mode: CUDA's stream-capture mode, as ``torch.cuda.graph`` takes it:
            ``"global"`` (default, PyTorch's) makes a capture fail when another thread calls a
            CUDA function that capture forbids meanwhile, e.g. a ``DataLoader``'s pin-memory
            thread allocating pinned memory; ``"thread_local"`` checks the capturing thread only
            (make the first call of each signature before such a loader starts, or use it).

    Memory: each graph keeps the memory of its call's intermediates between calls (one pool
    per wrapper, shared by its graphs); :meth:`reset` or leaving a ``with`` block frees it.
    ``create_graph=True`` (a map inside a training loss) is refused: call the explainer itself.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import GradCAM, GraphedExplainer
        >>> model = timm.create_model("test_resnet", num_classes=5).eval()
        >>> with GraphedExplainer(GradCAM(model)) as cam:  # on the CPU: the eager call
        ...     maps = cam(torch.randn(2, 3, 64, 64), target=[0, 3])
        >>> maps.shape, cam.last_mode
        (torch.Size([2, 1, 64, 64]), 'eager')
    """

    differentiable = False  # inference only: create_graph=True is refused

    CAPTURE_MODES = ("global", "thread_local", "relaxed")

    def __init__(self, explainer: Explainer, *, warmup: int = 3, clone: bool = True, max_graphs: int = 8,
                 capture_error_mode: str = "global") -> None:
        if not isinstance(explainer, Explainer):
            raise fail(FN, "explainer", "an egl explainer (e.g. GradCAM(model))",
                       f"a {type(explainer).__name__}",
                       "Wrap the explainer, not the model: GraphedExplainer(GradCAM(model))")
        super().__init__(explainer.model, upsample=explainer.upsample, normalize=explainer.normalize)
        self.explainer = explainer
        self.warmup = check_int(warmup, FN, "warmup", low=1, fix="Pass warmup=3")
        self.clone = check_flag(clone, FN, "clone")
        self.max_graphs = check_int(max_graphs, FN, "max_graphs", low=1, fix="Pass max_graphs=8")
        check_choice(capture_error_mode, self.CAPTURE_MODES, FN, "capture_error_mode")
        self.capture_error_mode = capture_error_mode
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self._pool: Any = None
        self.last_mode: str | None = None  # "eager", "capture" or "replay": what the last call did
        self.captures = 0  # graphs captured so far (recaptures included)

    # -- the call -------------------------------------------------------------------------
    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        """Saliency and logits for ``x``, as ``explainer.explain(x, target)`` computes them."""
        if create_graph:
            raise fail(FN, "create_graph", "False (a graph replays fixed kernels: no graph of the map "
                       "for a training loss)", "True", "Call the wrapped explainer itself inside a training loss")
        return self._call(x, target, logits=True)

    def __call__(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Tensor:
        if create_graph:
            return self.explain(x, target, create_graph=True).saliency  # (refused there)
        return self._call(x, target, logits=False).saliency

    def _call(self, x: Tensor, target: Any, logits: bool) -> Explanation:
        if not isinstance(x, Tensor) or x.device.type not in GRAPH_DEVICE_TYPES or capturing(x) \
                or _amp._ACTIVE.get() is not None:  # (an inner loss scale changes every step)
            self.last_mode = "eager"
            return self.explainer.explain(x, target)
        x = self.explainer._check_input(x, False)
        with _on(x.device):  # streams, captures and replays on x's device, whatever the current one
            tgt = targets(target, x.shape[0], self._fn(), x.device)
            key = _signature(self.explainer, x, tgt is None)
            graph = self._graphs.get(key)
            if graph is not None and graph.storage != _storage(self.explainer.model):
                del self._graphs[key]  # the model's tensors moved: the graph would read freed memory
                graph = None
            if graph is None:
                graph = self._capture(key, x, tgt)
                self.last_mode = "capture"
            else:
                self._graphs.move_to_end(key)
                self.last_mode = "replay"
            return self._replay(graph, x, tgt, logits)

    def _fn(self) -> str:
        return f"egl.explainers.{self.explainer.name or type(self.explainer).__name__}"

    def _capture(self, key: tuple[Any, ...], x: Tensor, tgt: Targets | None) -> _Graph:
        static_x = x.detach().clone()
        static_t = None if tgt is None else tgt.tensor.clone()
        ex = self.explainer
        # the eager warm-up checks the first targets (a bad one raises here) and gives the class count
        warm: list[Explanation] = []
        with _no_cast_cache(x):
            warm_up(lambda: warm.append(ex.explain(static_x, static_t)), self.warmup)
        num_classes = int(warm[-1].logits.shape[1])
        warm.clear()

        def call() -> Explanation:
            with deferred_checks() as checks, _no_cast_cache(x):  # the targets' range: checked per call, outside
                if static_t is not None:
                    checks.mark(static_t, ("classes", num_classes))
                return ex.explain(static_x, static_t)

        if self._pool is None:
            self._pool = new_pool()
        try:
            replay, out = capture(call, self._pool, self.capture_error_mode)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:
            raise RuntimeError(f"{FN}: {type(ex).__name__}'s call could not be captured in a CUDA graph ({e}). "
                               "Call the explainer itself (eagerly) instead.") from e
        self.captures += 1
        graph = _Graph(replay, static_x, static_t, out, num_classes, _storage(ex.model), _cached_constants())
        self._graphs[key] = graph
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return graph

    def _replay(self, graph: _Graph, x: Tensor, tgt: Targets | None, logits: bool) -> Explanation:
        with torch.no_grad():
            return self._replay_(graph, x, tgt, logits)

    def _replay_(self, graph: _Graph, x: Tensor, tgt: Targets | None, logits: bool) -> Explanation:
        fn = self._fn()
        pending = None
        if tgt is not None:
            assert graph.target is not None
            if tgt.known is not None:  # on the host: checked without a device read
                check_target_range(tgt.tensor, graph.num_classes, fn, known=tgt.known)
            elif tgt.tensor.numel():  # clamped into range meanwhile (an index past it would device-assert)
                pending = torch.stack([tgt.tensor.min(), tgt.tensor.max()])
            graph.target.copy_(tgt.tensor.clamp(0, graph.num_classes - 1) if pending is not None else tgt.tensor)
        if x is not graph.x:
            graph.x.copy_(x)
        graph.replay()
        if pending is not None:  # the one read, once the replay is queued
            lo, hi = pending.tolist()
            check_target_range(tgt.tensor, graph.num_classes, fn, known=(int(lo), int(hi)))  # type: ignore[union-attr]
        if not self.clone:
            return graph.out
        return Explanation(graph.out.saliency.clone(), graph.out.logits.clone() if logits else graph.out.logits)

    # -- lifetime ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop every captured graph and the memory they hold; the next call captures again."""
        self._graphs.clear()
        self._pool = None

    def remove_hooks(self) -> None:
        self.explainer.remove_hooks()

    def __enter__(self) -> "GraphedExplainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()
        self.remove_hooks()

    def __repr__(self) -> str:
        return f"GraphedExplainer({self.explainer!r}, graphs={len(self._graphs)})"


def _signature(explainer: Explainer, x: Tensor, predicted: bool) -> tuple[Any, ...]:
    """What one graph serves: everything a replay cannot change (the explainer's settings and
    every module's train/eval mode included)."""
    kind = x.device.type
    autocast = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)) if kind in ("cuda", "cpu") else None
    settings = tuple(sorted((k, v) for k, v in vars(explainer).items()
                            if not k.startswith("_") and k != "last_path" and isinstance(v, (bool, int, float, str))))
    modes = tuple(m.training for m in explainer.model.modules())
    return (tuple(x.shape), x.stride(), x.dtype, x.device, predicted, autocast, settings, modes)


@contextlib.contextmanager
def _on(device: torch.device) -> Iterator[None]:
    """``torch.cuda.device(device)`` for a CUDA device (a stream, a capture and a replay are made on
    the current device: a model on ``cuda:1`` would otherwise run eagerly into an empty graph)."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        yield


@contextlib.contextmanager
def _no_cast_cache(x: Tensor) -> Iterator[None]:
    """The caller's autocast state without autocast's cache of cast weights: cached, the graph
    would read the copies made at capture (stale after an optimiser step, freed when the caller's
    autocast block ends) instead of casting the parameters at every replay."""
    kind = x.device.type
    if kind not in ("cuda", "cpu") or not torch.is_autocast_enabled(kind):
        yield
        return
    with torch.autocast(kind, dtype=torch.get_autocast_dtype(kind), cache_enabled=False):
        yield


def _cached_constants() -> tuple[Any, ...]:
    """egl's device tables (interpolation candidates, sub-pixel gather indices) cached now: a graph
    holds them, so that a cache emptied later (they are bounded) does not free what it reads."""
    from egl.kernels import _bilinear, subpixel_dgrad

    return (*_bilinear._DEVICE_CACHE.values(), *subpixel_dgrad._TABLES.values())


def _storage(model: torch.nn.Module) -> tuple[int, ...]:
    return tuple(t.data_ptr() for t in _tensors(model))


def _tensors(model: torch.nn.Module) -> Iterator[Tensor]:
    yield from model.parameters()
    yield from model.buffers()
