"""timm glue: where to take Grad-CAM from, and what the classifier head lets us skip.

``resolve_target(model, layer)`` answers three questions once per model:

* **Which activation.** ``layer="auto"`` on a timm model takes the output of
  ``forward_features`` (the last feature stage, the tensor the head pools) for CNNs
  and for ViTs with average pooling. For ViTs that classify from a prefix token
  the final patch tokens do not reach the logits, so ``auto`` takes the input
  of the last block's attention (``blocks.-1.norm1``, as pytorch-grad-cam does).
  On a non-timm model ``auto`` probes one forward pass and takes the last module
  whose output is a 4-D map with more than one spatial position. A dotted module
  path (``"layer4"``, ``"blocks.7.norm1"``) overrides all of this.
* **Which head.** If the head starts with global average pooling, the gradient
  of a logit with respect to the map is the same at every position, so Grad-CAM
  needs no backward through the trunk (``head="pooled"``); if the pooled features go
  straight into a ``Linear``, the gradient is the class's weight row and Grad-CAM
  has the closed form ``relu(W[y] · A) / (H·W)`` (``head="linear"``).
* **How to lay tokens out.** Token outputs are reshaped to the patch grid from timm's
  own metadata (``patch_embed`` and ``num_prefix_tokens``), prefix tokens dropped.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import fail
from egl.errors import UnsupportedModelError

__all__ = ["Target", "resolve_target", "tokens_to_grid", "is_timm_model", "is_vit"]

FEATURES = "forward_features"


@dataclass(frozen=True)
class Target:
    """Where an explainer reads activations.

    Attributes:
        name: dotted module path, or ``"forward_features"`` for a timm model's feature output.
        module: the module hooked, or ``None`` when the output of ``forward_features`` is used.
        head: ``"linear"`` (closed form), ``"pooled"`` (head-only gradient) or ``"none"`` (autograd).
        fmt: layout of the activation: ``"NCHW"``, ``"NHWC"`` or ``"NLC"`` (tokens).
    """

    name: str
    module: nn.Module | None
    head: str
    fmt: str


def is_timm_model(model: nn.Module) -> bool:
    """True for models with timm's ``forward_features`` / ``forward_head`` split."""
    return all(callable(getattr(model, a, None)) for a in ("forward_features", "forward_head", "get_classifier"))


def is_vit(model: nn.Module) -> bool:
    """True for timm vision transformers with a patch grid and prefix tokens."""
    return is_timm_model(model) and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens") \
        and isinstance(getattr(model, "blocks", None), nn.Sequential)


def _grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    pe: Any = model.patch_embed
    if getattr(pe, "dynamic_img_size", False) or getattr(model, "dynamic_img_size", False):
        if hasattr(pe, "dynamic_feat_size"):
            return tuple(pe.dynamic_feat_size(input_hw))  # type: ignore[return-value]
    if getattr(pe, "grid_size", None) is not None:
        return tuple(pe.grid_size)  # type: ignore[return-value]
    ps = pe.patch_size
    return input_hw[0] // ps[0], input_hw[1] // ps[1]


def tokens_to_grid(tokens: Tensor, model: nn.Module, input_hw: tuple[int, int]) -> Tensor:
    """``[B, N, C]`` tokens to a ``[B, C, h, w]`` map, dropping timm's prefix tokens.

    Shape:
        tokens: ``B N C`` with ``N = num_prefix_tokens + h*w``; returns ``B C h w``.
    """
    h, w = _grid(model, input_hw)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if tokens.shape[1] != prefix + h * w:
        raise UnsupportedModelError(
            f"egl: tokens of shape {list(tokens.shape)} do not match {prefix} prefix tokens plus a "
            f"{h}x{w} patch grid for input {list(input_hw)} on {type(model).__name__}. Pass layer= "
            "naming a module whose output holds the patch tokens."
        )
    patch = tokens[:, prefix:]
    return patch.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def _avg_pool_fmt(model: nn.Module) -> str | None:
    """Input format of the head's global average pool, or None if the head does not start with one."""
    if is_vit(model):
        return "NLC" if getattr(model, "global_pool", None) == "avg" else None
    try:
        from timm.layers import SelectAdaptivePool2d
        from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    pool = getattr(model, "global_pool", None)
    if not isinstance(pool, SelectAdaptivePool2d):
        pool = getattr(getattr(model, "head", None), "global_pool", None)
    if not isinstance(pool, SelectAdaptivePool2d):
        return None
    inner = pool.pool
    if isinstance(inner, nn.AdaptiveAvgPool2d) and inner.output_size in (1, (1, 1)):
        return "NCHW"
    if isinstance(inner, FastAdaptiveAvgPool):
        return "NHWC" if getattr(inner, "pool_dim", (2, 3)) == (1, 2) else "NCHW"
    return None


def _restore_buffers(model: nn.Module, saved: list[Tensor]) -> None:
    """Put back the buffers a probe may have changed (BatchNorm statistics in train mode).

    Only changed buffers are written, through ``.data`` so that their autograd version
    counters stay put: a graph built before the probe (the user's forward pass, or the
    feature pass of this very call) saved these buffers, and a plain ``copy_`` would make
    its backward fail with "modified by an inplace operation". The values written are
    exactly those the graph saved.
    """
    with torch.no_grad():
        for b, s in zip(model.buffers(), saved):
            if not torch.equal(b, s):
                b.data.copy_(s)


def _keep_rng(device: torch.device) -> Any:
    """Run a probe without advancing the global RNG: dropout in train mode would otherwise
    make the first call of a seeded run draw different masks from every later one."""
    if device.type == "cpu":
        return torch.random.fork_rng(devices=[])
    return torch.random.fork_rng(devices=[device], device_type=device.type)


_LINEAR_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[bool, bool]]" = weakref.WeakKeyDictionary()


def _linear_after_pool(model: nn.Module, channels: int, fmt: str, like: Tensor) -> bool:
    """Does ``forward_head`` reduce to ``Linear(mean(A))`` in the model's current mode?

    Probed once per model and mode on two random pooled vectors; buffers are restored,
    so a head with BatchNorm is not disturbed. Dropout active in training mode makes
    the answer False (the autograd head path then includes the dropout mask).
    """
    cache = _LINEAR_CACHE.setdefault(model, {})
    if model.training in cache:
        return cache[model.training]
    ok = isinstance(model.get_classifier(), nn.Linear) and fmt in ("NCHW", "NHWC")
    if ok:
        shape = (2, channels, 1, 1) if fmt == "NCHW" else (2, 1, 1, channels)
        probe = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(like)
        saved = [b.detach().clone() for b in model.buffers()]
        try:
            with torch.no_grad(), _keep_rng(like.device):
                pre = model.forward_head(probe, pre_logits=True)
        except Exception:  # noqa: BLE001 - an unusual head is simply not linear
            pre = None
        finally:
            _restore_buffers(model, saved)
        ok = isinstance(pre, Tensor) and pre.shape == (2, channels) and torch.equal(pre, probe.reshape(2, channels))
    cache[model.training] = ok
    return ok


def head_kind(model: nn.Module, target: Target, feats: Tensor) -> str:
    """Refine ``target.head`` with the actual feature tensor (linear needs a probe)."""
    if target.head != "pooled":
        return target.head
    if target.fmt == "NLC":
        return "pooled"
    c = feats.shape[1] if target.fmt == "NCHW" else feats.shape[-1]
    return "linear" if _linear_after_pool(model, c, target.fmt, feats) else "pooled"


_PROBE_CACHE: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def _probe_last_map(model: nn.Module, x: Tensor) -> str:
    """Dotted name of the last module (in execution order) emitting a ``[B, C, H, W]`` map, H·W > 1."""
    if model in _PROBE_CACHE:
        return _PROBE_CACHE[model]
    order: list[str] = []
    handles = []

    def make(name: str):
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                order.append(name)
        return hook

    saved = [b.detach().clone() for b in model.buffers()]
    try:
        for name, mod in model.named_modules():
            if name:
                handles.append(mod.register_forward_hook(make(name)))
        with torch.no_grad(), _keep_rng(x.device):
            model(x[: min(2, x.shape[0])])
    finally:
        for h in handles:
            h.remove()
        _restore_buffers(model, saved)
    if not order:
        raise UnsupportedModelError(
            f"egl: {type(model).__name__} has no layer that outputs a spatial map [B, C, H, W] with "
            "H*W > 1, so Grad-CAM has nothing to explain. Pass layer='<dotted.module.name>' naming a "
            "convolutional layer, or use an input-space explainer such as 'input_gradient'."
        )
    _PROBE_CACHE[model] = order[-1]
    return order[-1]


def _module(model: nn.Module, name: str, fn: str) -> nn.Module:
    parts = name.split(".")
    mod: nn.Module = model
    for i, part in enumerate(parts):
        children = dict(mod.named_children())
        key = part
        if part.lstrip("-").isdigit() and isinstance(mod, (nn.Sequential, nn.ModuleList)):
            idx = int(part)
            if -len(mod) <= idx < len(mod):
                key = str(idx % len(mod))
        if key not in children:
            here = ".".join(parts[:i]) or type(model).__name__
            raise fail(fn, "layer", f"a dotted path of submodules of {type(model).__name__}",
                       repr(name), f"'{part}' is not a child of {here}; children there are "
                       f"{list(children)[:12]}")
        mod = children[key]
    return mod


def resolve_target(model: nn.Module, layer: str = "auto", x: Tensor | None = None,
                   *, fn: str = "egl.backbones.resolve_target") -> Target:
    """Pick the activation to explain (see the module docstring).

    Args:
        model: the classifier.
        layer: ``"auto"`` or a dotted submodule path (negative indices allowed: ``"blocks.-1.norm1"``).
        x: an input batch, needed only to probe non-timm models.
        fn: name of the public caller, for error messages.

    Raises:
        UnsupportedModelError: no spatial layer can be found.
        InputError: ``layer`` does not name a submodule.
    """
    if not isinstance(layer, str):
        raise fail(fn, "layer", "'auto' or a dotted module path such as 'layer4'", repr(layer),
                   "Pass the module's name as a string")
    vit = is_vit(model)
    if layer != "auto":
        return Target(layer, _module(model, layer, fn), "none", "NLC" if vit else "NCHW")
    if vit:
        pool_fmt = _avg_pool_fmt(model)
        if pool_fmt == "NLC":
            return Target(FEATURES, None, "pooled", "NLC")
        name = f"blocks.{len(model.blocks) - 1}.norm1"  # type: ignore[arg-type]
        return Target(name, _module(model, name, fn), "none", "NLC")
    if is_timm_model(model):
        pool_fmt = _avg_pool_fmt(model)
        return Target(FEATURES, None, "pooled" if pool_fmt else "none", pool_fmt or "NCHW")
    if x is None:
        raise fail(fn, "x", "an input batch to probe a non-timm model", "None",
                   "Pass x, or name the layer explicitly with layer=")
    name = _probe_last_map(model, x)
    return Target(name, _module(model, name, fn), "none", "NCHW")
