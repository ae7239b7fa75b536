"""timm glue: where to take Grad-CAM from, and what the classifier head lets us skip.

``resolve_target(model, layer)`` answers three questions once per model:

* **Which activation.** ``layer="auto"`` on a timm model takes the output of
  ``forward_features`` (the last feature stage, the tensor the head pools) for CNNs
  and for ViTs with average pooling. For ViTs that classify from a prefix token
  the final patch tokens do not reach the logits, so ``auto`` takes the input
  of the last block's attention (``blocks.-1.norm1``, as pytorch-grad-cam does).
  On a non-timm model ``auto`` probes one forward pass and takes the last module
  whose output is a 4-D map with more than one spatial position, once per input size (a
  map that is 1x1 for small images is the last usable one for larger ones). A dotted module
  path (``"layer4"``, ``"blocks.7.norm1"``) overrides all of this.
* **Which head.** If the head starts with global average pooling, the gradient
  of a logit with respect to the map is the same at every position, so Grad-CAM
  needs no backward through the trunk (``head="pooled"``); if the pooled features go
  straight into a ``Linear``, the gradient is the class's weight row and Grad-CAM
  has the closed form ``relu(W[y] · A) / (H·W)`` (``head="linear"``).
* **How to lay tokens out.** Token outputs are reshaped to the patch grid from timm's
  own metadata (``patch_embed``, or the ``stem`` of MLP-Mixers, and ``num_prefix_tokens``:
  class, distillation and register tokens are dropped). Channels-last maps (Swin, MambaOut,
  Sequencer: ``output_fmt == "NHWC"`` or an ``NHWC`` pooling head) are permuted.

Whether the head really starts with global average pooling is checked once per model
and mode (and again when a submodule is replaced, e.g. the head) by a probe
(``forward_head`` of a random map equals ``forward_head`` of its mean), so a head that pools
only after a convolution (VGG's ``pre_logits``, EfficientViT's ``in_conv``) takes the autograd
path, and one that pools inside ``forward_head`` without a pooling module (PVT-v2, MambaOut,
LeViT-conv) takes the fast paths. A layout egl cannot
read (hierarchical token models such as Twins, LeViT, Hiera, PiT; CrossViT's two branches)
raises :class:`~egl.errors.UnsupportedModelError` naming a ``layer=`` that works.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import describe, fail
from egl._module_hooks import bypassable, structure_stamp
from egl._transfer import upload
from egl.errors import InputError, UnsupportedModelError

__all__ = ["Target", "resolve_target", "tokens_to_grid", "patch_grid", "pool_features", "is_timm_model",
           "map_layout", "is_vit", "unsupported_model", "features_layout"]

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


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The model inside ``nn.DataParallel``, ``DistributedDataParallel`` and ``torch.compile``
    wrappers, or a timm model that a module of the user's holds with every parameter
    (``self.backbone``), and the dotted prefix that reaches it (``"module."``, ``"_orig_mod."``,
    ``"backbone."``; ``""`` for a model that is not wrapped)."""
    prefix = ""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model, prefix = model.module, prefix + "module."
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model, prefix = model._orig_mod, prefix + "_orig_mod."
        elif not is_timm_model(model) and (inside := _timm_inside(model))[1]:
            model, prefix = inside[0], prefix + inside[1]
        else:
            return model, prefix


def split_forward(model: nn.Module) -> bool:
    """True when ``model(x)`` is ``forward_head(forward_features(x))``, so that egl may call the two
    halves itself (Grad-CAM's closed form): a timm model whose ``forward`` is timm's own (not a
    subclass's override, nor one set on the instance) and with no hook on the model itself (a
    top-level pre-hook that normalises, a forward hook that rescales). Otherwise ``layer="auto"``
    hooks a layer and runs ``model(x)``."""
    if not is_timm_model(model) or not bypassable(model):
        return False
    owner = next((c for c in type(model).__mro__ if "forward" in vars(c)), None)
    return owner is not None and owner.__module__.split(".")[0] == "timm"


class _LayoutError(UnsupportedModelError):
    """Tokens or features whose layout egl cannot read; ``detail`` says why (without advice)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


def _patch_embed(model: nn.Module) -> nn.Module | None:
    """The patch embedding that fixes the token grid: ``patch_embed``, or an MLP-Mixer's ``stem``
    (of the model inside a DataParallel / DDP / torch.compile wrapper)."""
    model = unwrap(model)[0]
    for name in ("patch_embed", "stem"):
        pe = getattr(model, name, None)
        if isinstance(pe, nn.Module) and getattr(pe, "patch_size", None) is not None:
            return pe
    return None


def is_vit(model: nn.Module) -> bool:
    """True for timm token models: a patch embedding and a stack of ``blocks`` (ViT, DeiT, BEiT,
    EVA, CaiT, XCiT, ConViT, MLP-Mixer...)."""
    return is_timm_model(model) and _patch_embed(model) is not None \
        and isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList))


def patch_grid(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of the patch grid for an input of size ``input_hw``, from timm's patch embedding.

    Raises:
        UnsupportedModelError: the model has no patch embedding to read the grid from.
    """
    model = unwrap(model)[0]  # (a wrapper's layout is its model's)
    pe: Any = _patch_embed(model)
    if pe is None:
        detail = f"{type(model).__name__} emits tokens but has no patch embedding to lay them out on a grid"
        raise _LayoutError(f"egl: {detail}. Pass layer= naming a module whose output is a [B, C, H, W] map.",
                           detail)
    if getattr(pe, "dynamic_img_size", False) or getattr(model, "dynamic_img_size", False):
        if hasattr(pe, "dynamic_feat_size"):
            return tuple(pe.dynamic_feat_size(input_hw))  # type: ignore[return-value]
    if getattr(pe, "grid_size", None) is not None:
        return tuple(pe.grid_size)  # type: ignore[return-value]
    ps = pe.patch_size
    ps = (ps, ps) if isinstance(ps, int) else ps
    return input_hw[0] // ps[0], input_hw[1] // ps[1]


def tokens_to_grid(tokens: Tensor, model: nn.Module, input_hw: tuple[int, int], *,
                   prefix: int | None = None) -> Tensor:
    """``[B, N, C]`` tokens to a ``[B, C, h, w]`` map, dropping timm's prefix tokens.

    Args:
        tokens: token activations.
        model: the timm model (its patch embedding gives the grid).
        input_hw: size of the input image.
        prefix: leading tokens to drop; default ``model.num_prefix_tokens`` (class, distillation
            and register tokens).

    Shape:
        tokens: ``B N C`` with ``N = num_prefix_tokens + h*w``; returns ``B C h w``.
    """
    model = unwrap(model)[0]  # (a wrapper's layout is its model's)
    h, w = patch_grid(model, input_hw)
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0) if prefix is None else prefix
    if tokens.shape[1] != prefix + h * w:
        detail = (f"tokens of shape {list(tokens.shape)} do not match {prefix} prefix tokens plus a "
                  f"{h}x{w} patch grid for input {list(input_hw)} on {type(model).__name__}")
        raise _LayoutError(f"egl: {detail}. Pass layer= naming a module whose output holds the patch tokens.",
                           detail)
    patch = tokens[:, prefix:]
    return patch.reshape(tokens.shape[0], h, w, tokens.shape[2]).permute(0, 3, 1, 2)


def token_prefix(tokens: Tensor, model: nn.Module, input_hw: tuple[int, int]) -> int | None:
    """Prefix tokens to drop from a hooked token activation: none when the activation holds the
    patch tokens alone (CaiT's and XCiT's blocks add the class token only later), else the model's."""
    model = unwrap(model)[0]  # (a wrapper's layout is its model's)
    try:
        h, w = patch_grid(model, input_hw)
    except _LayoutError:
        return None
    return 0 if tokens.shape[1] == h * w else None


def pool_features(feats: Tensor, fmt: str, model: nn.Module) -> Tensor:
    """Global average pool of ``forward_features`` output, in the layout ``forward_head`` takes.

    ``NCHW``/``NHWC`` maps pool to one position (``keepdim``); ``NLC`` tokens keep their prefix
    tokens and have the patch tokens replaced by their mean (one token).
    """
    model = unwrap(model)[0]  # (a wrapper's layout is its model's)
    if fmt == "NLC":
        prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        return torch.cat([feats[:, :prefix], feats[:, prefix:].mean(dim=1, keepdim=True)], dim=1)
    return feats.mean(dim=(2, 3) if fmt == "NCHW" else (1, 2), keepdim=True)


def _avg_pool_fmt(model: nn.Module) -> str | None:
    """Input format of the head's global average pool, or None if the head does not start with one.

    A structural hint only: :func:`head_kind` checks it (and finds pooling heads it misses) by a probe.
    """
    if is_vit(model):
        return "NLC" if getattr(model, "global_pool", None) == "avg" else None
    try:
        from timm.layers import SelectAdaptivePool2d
        from timm.layers.adaptive_avgmax_pool import FastAdaptiveAvgPool
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    head = getattr(model, "head", None)
    pool = getattr(model, "global_pool", None)
    if not isinstance(pool, SelectAdaptivePool2d):
        pool = getattr(head, "global_pool", None)
    if not isinstance(pool, SelectAdaptivePool2d):
        # heads that pool in forward() without a pooling module (timm's ClNormMlpClassifierHead)
        if isinstance(head, nn.Module) and getattr(head, "pool_type", None) == "avg":
            dim = getattr(head, "pool_dim", None)
            if dim == (1, 2) or (dim is None and getattr(model, "output_fmt", None) == "NHWC"):
                return "NHWC"
            return "NCHW" if dim in ((2, 3), (-2, -1)) or dim is None else None
        return None
    inner = pool.pool
    if isinstance(inner, nn.AdaptiveAvgPool2d) and inner.output_size in (1, (1, 1)):
        return "NCHW"
    if isinstance(inner, FastAdaptiveAvgPool):  # timm >= 1.0 names the dims ``dim``, older ``pool_dim``
        dim = tuple(getattr(inner, "dim", getattr(inner, "pool_dim", (2, 3))))
        return "NHWC" if dim == (1, 2) else "NCHW"
    return None


def _features_fmt(model: nn.Module, pool_fmt: str | None) -> str:
    """Layout of ``forward_features``: the head's pooling input, else timm's ``output_fmt``."""
    if pool_fmt is not None:
        return pool_fmt
    return "NHWC" if getattr(model, "output_fmt", None) == "NHWC" else "NCHW"


def map_layout(model: nn.Module, act: Tensor, input_hw: tuple[int, int]) -> str:
    """``"NCHW"`` or ``"NHWC"``: the layout of a 4-D activation taken at a named layer.

    The reading whose two spatial sizes fit in the input and shrink it by the most similar
    factor along both axes wins (``[B, 56, 56, 96]`` from a 224 px input is NHWC: read as NCHW,
    its "width" 96 would shrink the input 2.3x against 4x for the height). Where the readings
    are equally good (``[B, 56, 56, 56]``) or neither fits, the model's ``output_fmt`` decides
    (timm's channels-last families set it to ``"NHWC"``), else NCHW.

    Args:
        model: the model (its ``output_fmt`` breaks ties).
        act: the ``[B, ?, ?, ?]`` activation. input_hw: the input's ``(H, W)``.

    Returns:
        ``"NCHW"`` or ``"NHWC"``.

    Example:
        >>> import torch
        >>> map_layout(torch.nn.Identity(), torch.zeros(2, 56, 56, 96), (224, 224))
        'NHWC'
        >>> map_layout(torch.nn.Identity(), torch.zeros(2, 96, 56, 56), (224, 224))
        'NCHW'
    """
    model = unwrap(model)[0]  # (a wrapper's layout is its model's)
    _, a, b, c = act.shape
    big_h, big_w = input_hw

    def mismatch(h: int, w: int) -> float:
        if not (0 < h <= big_h and 0 < w <= big_w):
            return float("inf")
        sy, sx = big_h / h, big_w / w
        return abs(sy - sx) / max(sy, sx)

    nchw, nhwc = mismatch(b, c), mismatch(a, b)
    if min(nchw, nhwc) <= 0.25 and abs(nchw - nhwc) > 0.05:
        return "NCHW" if nchw < nhwc else "NHWC"
    return "NHWC" if getattr(model, "output_fmt", None) == "NHWC" else "NCHW"


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


#: model -> {(structure stamp, training): answer}; the stamp changes when a submodule is replaced
#: (``model.fc = nn.Sequential(...)``, ``model.global_pool = GeM()``): the head is probed again.
_LINEAR_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, bool], bool]]" = weakref.WeakKeyDictionary()


def _linear_after_pool(model: nn.Module, channels: int, fmt: str, like: Tensor) -> bool:
    """Does ``forward_head`` reduce to ``Linear(mean(A))`` in the model's current mode?

    Probed once per model, mode and set of submodules (replacing the head probes again) on two
    random pooled vectors; buffers are restored,
    so a head with BatchNorm is not disturbed. Dropout active in training mode makes
    the answer False (the autograd head path then includes the dropout mask).
    """
    cache = _LINEAR_CACHE.setdefault(model, {})
    key = (structure_stamp(model), model.training)
    if key in cache:
        return cache[key]
    ok = isinstance(model.get_classifier(), nn.Linear) and fmt in ("NCHW", "NHWC")
    if ok:
        shape = (2, channels, 1, 1) if fmt == "NCHW" else (2, 1, 1, channels)
        probe = upload(torch.randn(shape, generator=torch.Generator().manual_seed(0)), like.device, like.dtype)
        saved = [b.detach().clone() for b in model.buffers()]
        try:
            with torch.no_grad(), _keep_rng(like.device):
                pre = model.forward_head(probe, pre_logits=True)
        except Exception:  # noqa: BLE001 - an unusual head is simply not linear
            pre = None
        finally:
            _restore_buffers(model, saved)
        ok = isinstance(pre, Tensor) and pre.shape == (2, channels) and torch.equal(pre, probe.reshape(2, channels))
    cache[key] = ok
    return ok


_POOL_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, bool, str], bool]]" = weakref.WeakKeyDictionary()


def _pre_logits(model: Any, feats: Tensor) -> Any:
    try:
        return model.forward_head(feats, pre_logits=True)
    except TypeError:  # a head without the pre_logits switch
        return model.forward_head(feats)


def _pools_first(model: nn.Module, feats: Tensor, fmt: str) -> bool:
    """Does ``forward_head`` start with global average pooling in the model's current mode?

    Then ``forward_head(A) == forward_head(mean(A))`` for every ``A``; probed once per model,
    mode and layout on a random ``A`` shaped like ``feats``. Both calls start from the same RNG
    state (dropout draws the same mask) and buffers are restored. A single position is pooled
    trivially and is not cached (a larger input may tell another story).
    """
    if fmt == "NLC":
        positions = feats.shape[1] - int(getattr(model, "num_prefix_tokens", 0) or 0)
    else:
        positions = feats.shape[2] * feats.shape[3] if fmt == "NCHW" else feats.shape[1] * feats.shape[2]
    if positions == 1:
        return True
    cache = _POOL_CACHE.setdefault(model, {})
    key = (structure_stamp(model), model.training, fmt)
    if key in cache:
        return cache[key]
    ok = positions > 1
    if ok:
        gen = torch.Generator().manual_seed(0)
        probe = upload(torch.randn((2, *feats.shape[1:]), generator=gen), feats.device, feats.dtype)
        saved = [b.detach().clone() for b in model.buffers()]
        try:
            with torch.no_grad():
                with _keep_rng(feats.device):
                    full = _pre_logits(model, probe)
                with _keep_rng(feats.device):
                    pooled = _pre_logits(model, pool_features(probe, fmt, model))
            ok = isinstance(full, Tensor) and isinstance(pooled, Tensor) and full.shape == pooled.shape
            if ok:
                tol = 1e-3 if torch.finfo(full.dtype).bits >= 32 else 5e-2
                ok = bool((full - pooled).abs().max() <= tol * full.abs().max().clamp_min(1e-12))
        except Exception:  # noqa: BLE001 - a head that rejects pooled input does not pool first
            ok = False
        finally:
            _restore_buffers(model, saved)
    cache[key] = ok
    return ok


def features_layout(model: nn.Module, target: Target, feats: Any) -> Target:
    """``target`` with the layout of the actual ``forward_features`` output, where its rank says
    otherwise: a ``[B, C, H, W]`` map from a token model (SAM's convolutional neck), or tokens from
    a model with a patch embedding whose head was not recognised."""
    if target.name != FEATURES or not isinstance(feats, Tensor):
        return target
    if target.fmt == "NLC" and feats.dim() == 4:
        return replace(target, fmt=_features_fmt(model, None))
    if target.fmt != "NLC" and feats.dim() == 3 and _patch_embed(model) is not None:
        return replace(target, fmt="NLC")
    return target


def head_kind(model: nn.Module, target: Target, feats: Tensor) -> str:
    """The head as Grad-CAM can use it, given the actual feature tensor.

    ``"linear"`` (global average pool then ``Linear``: closed form), ``"pooled"`` (global average
    pool first: head-only gradient) or ``"none"`` (autograd). Only a ``forward_features`` target
    can have a usable head; both properties are probed (once per model and mode, and again when a
    submodule is replaced).
    """
    if target.module is not None or target.name != FEATURES or (target.fmt == "NLC") != (feats.dim() == 3):
        return "none"
    if not _pools_first(model, feats, target.fmt):
        return "none"
    if target.fmt == "NLC":
        return "pooled"
    c = feats.shape[1] if target.fmt == "NCHW" else feats.shape[-1]
    return "linear" if _linear_after_pool(model, c, target.fmt, feats) else "pooled"


#: model -> {input (H, W): the probed layer's name}. Keyed on the input size: a map that is 1x1
#: at a small size (skipped) is the last usable one at a larger size.
_PROBE_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, int, int], str]]" = weakref.WeakKeyDictionary()


def _spatial(out: Tensor, x: Tensor) -> bool:
    """A 4-D output that reads as a map of ``x`` (NCHW or NHWC): the input scaled by one factor along
    both axes to within a cell (``|h - ih / s| <= 1`` and ``|w - iw / s| <= 1`` for some ``s``: a
    strided stack's rounding; ``s < 1`` where a model upsamples first). Attention's ``[B, heads,
    tokens, head_dim]`` tensors are not (a ViT's at 64 px: 17 x 32 of 64 x 64 needs s = 4 and 2)."""
    ih, iw = int(x.shape[-2]), int(x.shape[-1])
    for h, w in ((int(out.shape[-2]), int(out.shape[-1])), (int(out.shape[1]), int(out.shape[2]))):
        # 1 / s in [(h - 1) / ih, (h + 1) / ih] and in [(w - 1) / iw, (w + 1) / iw]
        if h > 0 and w > 0 and max((h - 1) / ih, (w - 1) / iw) <= min((h + 1) / ih, (w + 1) / iw):
            return True
    return False


def _maps_in_order(model: nn.Module, x: Tensor, convs_only: bool = False) -> list[str]:
    """Dotted names of the modules emitting a ``[B, C, H, W]`` map (batch ``B``, H·W > 1), in
    execution order, from one forward pass (no grad, RNG and buffers untouched, hooks removed)."""
    order: list[str] = []
    handles = []
    xb = x[: min(2, x.shape[0])]

    def make(name: str):
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, Tensor) and out.dim() == 4 and out.shape[0] == xb.shape[0] \
                    and out.shape[-1] * out.shape[-2] > 1 and _spatial(out, xb):
                order.append(name)
        return hook

    saved = [b.detach().clone() for b in model.buffers()]
    try:
        for name, mod in model.named_modules():
            if name and (not convs_only or isinstance(mod, nn.Conv2d)):
                handles.append(mod.register_forward_hook(make(name)))
        with torch.no_grad(), _keep_rng(x.device):
            model(xb)
    finally:
        for h in handles:
            h.remove()
        _restore_buffers(model, saved)
    return order


def _probe_last_map(model: nn.Module, x: Tensor) -> str:
    """Dotted name of the last module (in execution order) emitting a ``[B, C, H, W]`` map, H·W > 1,
    for inputs of ``x``'s spatial size (probed once per model and size)."""
    hw = (structure_stamp(model), int(x.shape[-2]), int(x.shape[-1]))
    known = _PROBE_CACHE.setdefault(model, {})
    if hw in known:
        return known[hw]
    order = _maps_in_order(model, x)
    if not order:
        raise UnsupportedModelError(
            f"egl: {type(model).__name__} has no layer that outputs a spatial map [B, C, H, W] with "
            "H*W > 1, so Grad-CAM has nothing to explain. Pass layer='<dotted.module.name>' naming a "
            "convolutional layer, or use an input-space explainer such as 'input_gradient'."
        )
    known[hw] = order[-1]
    vit = next((n for n, m in model.named_modules() if n and is_vit(m)), None)
    if vit is not None and order[-1].startswith(f"{vit}.patch_embed"):
        warnings.warn(f"egl: the last spatial map of {type(model).__name__}'s forward is its ViT's patch "
                      f"embedding '{order[-1]}' (the image cut into patches, before any block): a Grad-CAM there "
                      f"explains little. Pass layer='{vit}.blocks.-1.norm1'.", UserWarning, stacklevel=4)
    return order[-1]


def _model_name(model: nn.Module) -> str:
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return f"{type(model).__name__} ('{arch}')" if arch else type(model).__name__


def unsupported_model(model: nn.Module, x: Tensor, detail: str, fn: str) -> UnsupportedModelError:
    """The error for a model whose target egl cannot find by itself, naming a ``layer=`` that works.

    The suggestion is the last ``Conv2d`` (in execution order) whose output is a ``[B, C, H, W]``
    map with more than one position, found by one probing forward pass of ``x``.
    """
    order = _maps_in_order(model, x, convs_only=True)
    if order:
        hint = (f"Pass layer='{order[-1]}' (its last convolution with a [B, C, H, W] output), or any "
                "dotted module name whose output is a [B, C, H, W] map")
    else:
        hint = ("No convolution outputs a [B, C, H, W] map for this batch: pass layer= naming a module "
                "that does, or use an input-space explainer such as 'input_gradient'")
    return UnsupportedModelError(f"{fn}: {_model_name(model)} is not supported with layer='auto': "
                                 f"{detail}. {hint}.")


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
    layer = layer_name(model, layer, fn)
    inner, prefix = unwrap(model)  # DataParallel, DDP, torch.compile: the timm model inside
    vit = is_vit(inner)
    if layer != "auto":
        try:
            module = _module(model, layer, fn)
        except InputError:
            if not prefix:
                raise
            module = _module(inner, layer, fn)  # (the inner model's names, as written for it)
        return Target(layer, module, "none", "NLC" if vit else "NCHW")
    if prefix and is_vit(inner):  # run through the wrapper, hooking a layer of the ViT inside
        found = _auto_target(inner, x, fn, split=False)
        return Target(prefix + found.name, found.module, found.head, found.fmt)
    if prefix:  # a CNN inside: probe the wrapper's own forward (a resize before the model moves the maps)
        return _auto_target(model, x, fn, split=False)
    return _auto_target(model, x, fn, split=split_forward(model))


#: ``_timm_inside``'s answer per model and structure stamp (it walks every module and parameter;
#: the token-layout functions ask on every call).
_INSIDE: "weakref.WeakKeyDictionary[nn.Module, tuple[int, weakref.ref, str]]" = weakref.WeakKeyDictionary()


def _timm_inside(model: nn.Module) -> tuple[nn.Module, str]:
    """A timm model that a module of the user's holds with every parameter (``self.backbone =
    timm.create_model(...)`` beside a forward that picks the logits), and its dotted prefix; the
    model itself and ``""`` when there is none (its layers are then probed). Cached per model
    while its modules stay the same objects."""
    stamp = structure_stamp(model)
    seen = _INSIDE.get(model)
    if seen is not None and seen[0] == stamp and seen[1]() is not None:
        return seen[1](), seen[2]  # type: ignore[return-value]
    found: tuple[nn.Module, str] = (model, "")
    total = sum(p.numel() for p in model.parameters())
    for name, sub in model.named_modules():
        if name and is_timm_model(sub):
            if total and sum(p.numel() for p in sub.parameters()) == total:
                found = (sub, name + ".")
            break  # the outermost timm model does not hold everything: no single model inside
    _INSIDE[model] = (stamp, weakref.ref(found[0]), found[1])
    return found


def layer_name(model: nn.Module, layer: object, fn: str) -> str:
    """``layer`` as a dotted name: ``"auto"`` and names as given, a submodule of ``model`` (``model.layer4``,
    as pytorch-grad-cam and captum take it) by its name among ``model.named_modules()``."""
    if isinstance(layer, str):
        return layer
    if isinstance(layer, nn.Module):
        if layer is model or layer is unwrap(model)[0]:
            raise fail(fn, "layer", "one of the model's layers", f"the model itself ({type(layer).__name__})",
                       "Pass a submodule whose output is a map, e.g. model.layer4, or layer='auto'")
        name = next((n for n, m in model.named_modules() if m is layer and n), None)
        if name is None:
            raise fail(fn, "layer", f"a submodule of the model ({type(model).__name__}), or its dotted name",
                       f"a {type(layer).__name__} that is not one of its modules",
                       "Pass a module of this model (e.g. model.layer4) or its name ('layer4'); a model "
                       "copied or rebuilt since holds other module objects")
        return name
    raise fail(fn, "layer", "'auto', a dotted module path such as 'layer4', or a submodule of the model",
               describe(layer), "Pass the module, or its name as a string")


def _auto_target(model: nn.Module, x: Tensor | None, fn: str, *, split: bool) -> Target:
    """``layer="auto"``: the features of a split forward (``split``), a ViT's last ``norm1``, or the
    last spatial map of a probed forward pass."""
    vit = is_vit(model)
    if vit:
        pool_fmt = _avg_pool_fmt(model)
        if pool_fmt == "NLC" and split:
            return Target(FEATURES, None, "pooled", "NLC")
        if pool_fmt == "NLC" and isinstance(getattr(model, "norm", None), nn.Module):
            return Target("norm", model.norm, "none", "NLC")  # forward_features' output, hooked
        last = len(model.blocks) - 1  # type: ignore[arg-type]
        if not isinstance(getattr(model.blocks[last], "norm1", None), nn.Module):  # type: ignore[index]
            raise UnsupportedModelError(
                f"{fn}: {_model_name(model)} classifies from a prefix token and its last block "
                f"'blocks.{last}' has no 'norm1' (the input of its attention) to take Grad-CAM from. "
                f"Pass layer='blocks.{last}.<name of the norm before the attention>'.")
        name = f"blocks.{last}.norm1"
        return Target(name, _module(model, name, fn), "none", "NLC")
    if split:
        pool_fmt = _avg_pool_fmt(model)
        return Target(FEATURES, None, "pooled" if pool_fmt else "none", _features_fmt(model, pool_fmt))
    if x is None:
        raise fail(fn, "x", "an input batch to probe a non-timm model", "None",
                   "Pass x, or name the layer explicitly with layer=")
    name = _probe_last_map(model, x)
    return Target(name, _module(model, name, fn), "none", "NCHW")
