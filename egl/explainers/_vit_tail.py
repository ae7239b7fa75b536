"""Inference Grad-CAM of a class-token ViT without the last block's full backward graph.

For a timm ``VisionTransformer`` that classifies from its class token, Grad-CAM's target is the
last block's ``norm1`` output ``A`` (all tokens). The logits depend on ``A`` only through the
class token's path: its query, every token's key and value, then the class token alone through
the projection, the MLP, the final norm and the head. Running just that path (instead of the
block on all tokens) gives the same logits and the same gradient with respect to ``A`` while
keeping only the keys and values for the backward: the activations of the MLP on every token,
the largest tensors of the block, are never made.

Used only when it is exact: a timm ``VisionTransformer`` / ``Block`` / ``Attention`` (exact
types, a plain ``nn.Linear`` for ``qkv``) with ``global_pool="token"``, in eval mode, without
``create_graph``, with no hook (nor an instance ``forward``) on the model, the last block or its
attention, which the short pass does not call (checked on every call: a hook added later sends
the call to the full pass); and only after a one-time check per model that the shortened pass
reproduces the model's logits (otherwise the full pass runs, as before). Every other submodule
is called as a module, so hooks and wrappers inside ``q_norm``, ``proj`` or the MLP take effect
as in the full pass.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._module_hooks import bypassable, structure_stamp

__all__ = ["usable", "capture", "tail_logits"]

_VERIFIED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()
_VERIFIED_AT: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()  # structure stamps


class _Stop(Exception):
    """Ends the trunk's forward pass once the target activation is captured."""


def _eligible(model: nn.Module, target: nn.Module) -> bool:
    try:
        from timm.models.vision_transformer import Attention, Block, VisionTransformer
    except ImportError:  # pragma: no cover - timm is a dependency
        return False
    if type(model) is not VisionTransformer or model.training:
        return False
    if getattr(model, "global_pool", None) != "token" or getattr(model, "attn_pool", None) is not None:
        return False
    blk: Any = model.blocks[-1]  # type: ignore[index]
    if target is not getattr(blk, "norm1", None):
        return False
    if type(blk) is not Block or type(blk.attn) is not Attention or getattr(blk.attn, "gate", None) is not None:
        return False
    if not bypassable(model, blk, blk.attn) or "forward_head" in vars(model):  # checked on every call
        return False  # the short pass calls neither the model, the block nor its attention
    return isinstance(blk.attn.qkv, nn.Linear)  # adapters (LoRA) or quantised layers: full pass


def capture(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(A, block input)`` of the last block, under ``no_grad``; the pass stops at ``A``."""
    blk: Any = model.blocks[-1]  # type: ignore[index]
    store: dict[str, Tensor] = {}

    def pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
        store["x_in"] = args[0]

    def post(_m: nn.Module, _inp: Any, out: Tensor) -> None:
        store["a"] = out
        raise _Stop

    handles = [blk.register_forward_pre_hook(pre), blk.norm1.register_forward_hook(post)]
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return store["a"], store["x_in"]


def tail_logits(model: nn.Module, a: Tensor, x_in: Tensor) -> Tensor:
    """The model's logits from ``A`` (differentiable) along the class token's path only."""
    m: Any = model
    blk = m.blocks[-1]
    attn = blk.attn
    b, n, _ = a.shape
    heads = attn.num_heads
    qkv = attn.qkv(a)  # the module itself, whatever it wraps; q is used for the class token only
    dim = qkv.shape[-1] // 3
    hd = dim // heads
    q = qkv[:, :1, :dim].reshape(b, 1, heads, hd).transpose(1, 2)
    k, v = qkv[..., dim:].reshape(b, n, 2, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    o = F.scaled_dot_product_attention(q, k, v)  # eval mode: no attention dropout
    o = o.transpose(1, 2).reshape(b, 1, dim)
    o = attn.proj_drop(attn.proj(getattr(attn, "norm", nn.Identity())(o)))
    t = x_in[:, :1] + blk.drop_path1(blk.ls1(o))
    t = t + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(t))))
    return m.forward_head(m.norm(t))


def usable(model: nn.Module, target: nn.Module, x: Tensor) -> bool:
    """Whether the shortened pass applies (``target``: the Grad-CAM layer); checked once per model
    (and again when one of its submodules is replaced)."""
    if not _eligible(model, target):
        return False
    stamp = structure_stamp(model)
    if model not in _VERIFIED or _VERIFIED_AT.get(model) != stamp:  # again once a submodule is replaced
        try:
            with torch.no_grad():
                full = model(x)
                a, x_in = capture(model, x)
                short = tail_logits(model, a, x_in)
            scale = float(full.abs().max()) + 1e-12
            ok = bool(torch.allclose(short.float(), full.float(), rtol=1e-4, atol=1e-4 * scale))
        except Exception:  # noqa: BLE001 - anything unexpected: the full pass, which raises its own errors
            ok = False
        _VERIFIED[model], _VERIFIED_AT[model] = ok, stamp
    return _VERIFIED[model]
