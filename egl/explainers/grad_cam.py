"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
Gradient-based Localization", ICCV 2017), batched and trainable.

``alpha_k = mean_ij d s_y / d A_k[i, j]``, ``map = ReLU(sum_k alpha_k A_k)``, with ``s_y`` the
target class's logit and ``A`` the target layer's activation. Then bilinear upsampling to
the input (``align_corners=False``) and per-sample min-max normalisation with a relative
epsilon, as in ``shared/METHODS.md``.

Three paths compute the same map; the fastest valid one is taken (``path="auto"``):

* ``closed_form`` -- the head is global average pooling then ``Linear``: ``alpha = W[y] / (H·W)``.
  One forward pass, no backward at all; as a loss, gradients reach the trunk through ``A``
  and the head through ``W`` without double backprop.
* ``pooled`` -- the head starts with global average pooling (then norm / MLP / dropout):
  the gradient is uniform over positions, so only the head is differentiated.
* ``autograd`` -- anything else: gradients of the logit with respect to the hooked layer.

Without ``create_graph`` the trunk runs under ``no_grad`` and gradients are enabled only
from the target layer on, so a saliency call costs about one inference forward pass.

Two options serve recipes that train on other variants (DRE, Li et al. CVPR 2023):
``relu=False`` keeps the signed map ``sum_k alpha_k A_k``; ``detach_weights=True`` treats the
channel weights ``alpha`` as constants, so with ``create_graph=True`` gradients reach the
parameters only through the activations ``A`` (and no double backward is needed).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn

from egl._amp import inner_grad
from egl._check import batch_of_one, check_choice, check_flag, check_logits, fail
from egl._module_hooks import structure_stamp
from egl.backbones import (Target, _LayoutError, features_layout, head_kind, map_layout, pool_features,
                            layer_name, resolve_target, split_forward, token_prefix, tokens_to_grid,
                            unsupported_model, unwrap)
from egl.errors import UnsupportedModelError
from egl.explainers import _vit_tail
from egl.explainers.base import Explainer, Explanation, Targets, double_backward_ready, targets
from egl.kernels.cam_epilogue import BACKENDS, cam_epilogue

__all__ = ["GradCAM", "grad_cam", "CAMParts", "position_map", "weight_dtype", "in_grad_cam_family", "same_maps_as_grad_cam"]

PATHS = ("auto", "closed_form", "pooled", "autograd")


#: What every path hands to the epilogue: activations ``[B, C, h, w]``, channel weights ``[B, C]``
#: and the scale of the weighted sum; the map is ``relu(scale * sum_c weights[:, c] * acts[:, c])``.
CAMParts = tuple[Tensor, Tensor, float]


def weight_dtype(*ts: Tensor) -> torch.dtype:
    """The dtype a weighting computes in: float32 (half-precision sums of ``A * g`` lose too
    much), or float64 where an input is float64."""
    out = torch.float32
    for t in ts:
        out = torch.promote_types(out, t.dtype)
    return out


def position_map(m: Tensor, scale: float = 1.0) -> CAMParts:
    """A per-position weighting's map summed over channels, ``m: [B, 1, h, w]``, as :data:`CAMParts`."""
    return m, m.new_ones(m.shape[0], 1), scale


def _to_nchw(a: Tensor, fmt: str, model: nn.Module, hw: tuple[int, int]) -> Tensor:
    if fmt == "NLC":
        return tokens_to_grid(a, model, hw, prefix=token_prefix(a, model, hw))
    if fmt == "NHWC":
        return a.permute(0, 3, 1, 2)
    return a


def _pick(logits: Tensor, target: Targets | None, fn: str, batch: int) -> Tensor:
    """The class indices to explain: the target's (range read at the end of the call on an
    accelerator, see :mod:`egl.explainers._targets`), or the predicted class."""
    check_logits(logits, batch, fn)
    if target is None:
        return logits.detach().argmax(dim=1)
    return target.index(logits.shape[1], fn, defer=True)


class GradCAM(Explainer):
    """Grad-CAM bound to a model and a target layer.

    Args:
        model: a classifier returning logits ``[B, K]`` (any timm model, or any CNN).
        layer: ``"auto"`` (see :func:`egl.backbones.resolve_target`), a dotted module path, or the
            module itself (``model.layer4``; kept by its name, so a module replaced later at that
            name is the one explained).
        upsample: bilinear resize to the input size (default) or keep the feature resolution.
        normalize: per-sample min-max to [0, 1] (default). ``False`` returns the raw map.
        path: ``"auto"`` (fastest valid), or force ``"closed_form"``, ``"pooled"``, ``"autograd"``.
            Forcing a path the model's head does not allow raises.
        relu: apply the ReLU of Grad-CAM (default). ``False`` keeps the signed map (then
            ``normalize`` maps its minimum, possibly negative, to 0).
        detach_weights: treat the channel weights as constants (default ``False``): ``W[y]`` in
            the closed form, the head's gradient in the pooled path, ``alpha`` in the autograd
            path are detached, and computed without ``create_graph``. With ``create_graph=True``
            gradients then reach the parameters only through the activations: a head whose
            weights appear only in ``alpha`` (a linear head) gets no gradient from the map.
        backend: the epilogue (weighted channel sum, ReLU, upsampling, min-max) runs as one fused
            Triton kernel on CUDA (``"auto"``), or force ``"torch"`` / ``"triton"``
            (see :mod:`egl.kernels.cam_epilogue`).

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` (or ``B 1 h w`` with ``upsample=False``).

    Example:
        >>> import timm, torch
        >>> from egl.explainers import GradCAM
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> with GradCAM(model) as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64), target=[0, 3])
        >>> maps.shape
        torch.Size([2, 1, 64, 64])
    """

    name = "grad_cam"

    def __init__(self, model: nn.Module, layer: str | nn.Module = "auto", *, upsample: bool = True,
                 normalize: bool = True, path: str = "auto", relu: bool = True,
                 detach_weights: bool = False, backend: str = "auto") -> None:
        super().__init__(model, upsample=upsample, normalize=normalize)
        ctor = f"egl.explainers.{type(self).__name__}"  # a variant names itself in its errors
        check_choice(path, PATHS, ctor, "path")
        self.layer = layer_name(self.model, layer, ctor)  # (a module given: its name, re-resolved if replaced)
        if isinstance(self.__dict__.get("_init_arguments"), dict) and "layer" in self._init_arguments:
            self._init_arguments["layer"] = self.layer  # (what config() shows: the name, not the module)
        self.path = path
        self.relu = check_flag(relu, ctor, "relu")
        self.detach_weights = check_flag(detach_weights, ctor, "detach_weights")
        check_choice(backend, BACKENDS, ctor, "backend")  # not after a whole forward
        self.backend = backend
        self._target: Target | None = None
        # a model egl cannot split into forward_features / forward_head (not timm's, a forward of its
        # own, a hook on the model) with layer="auto" is probed per input size (cached): resolved every call
        self._probed = layer == "auto" and not split_forward(self.model)
        self._warned_sizes: set[tuple[int, int]] = set()  # input sizes whose 1 x 1 map was warned about
        self._token_checked: set[str] = set()  # token layers whose patch-token gradient was checked
        self._stamp = structure_stamp(self.model)
        if not self._probed:
            self._target = resolve_target(self.model, self.layer, fn=ctor)
        self.last_path: str | None = None  # which path the last call took (for tests and logs)

    def _stale_split(self) -> bool:
        """Whether to resolve the target again: the target is the split forward's features, but the
        model has since got a hook or a forward of its own (from now on, a probed layer: the forward
        egl would skip must run); or a submodule was replaced since (``model.bn2 = ...``: SyncBN
        conversion, fusing, adapters), so the named layer is looked up again."""
        if self._target is not None and self._target.module is None and not split_forward(self.model):
            self._probed = True
        stamp = structure_stamp(self.model)
        if stamp != self._stamp:
            self._stamp = stamp
            return True
        return self._probed

    @property
    def target_layer(self) -> str | None:
        """Name of the resolved target (``"forward_features"`` or a dotted module path)."""
        return self._target.name if self._target else None

    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        """Grad-CAM maps and logits for ``x``; ``target=None`` explains the predicted class."""
        with batch_of_one(f"egl.explainers.{self.name}", "x"):
            return self._explain(x, target, create_graph)

    def _explain(self, x: Tensor, target: Any, create_graph: bool) -> Explanation:
        fn = f"egl.explainers.{self.name}"
        x = self._check_input(x, create_graph)
        tgt = targets(target, x.shape[0], fn, x.device)
        if self._target is None or self._probed or self._stale_split():
            self._target = resolve_target(self.model, self.layer, x, fn=fn)
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        try:
            with double_backward_ready(create_graph and not self.detach_weights):  # constant weights: one backward
                if self._target.module is None:
                    parts, logits = self._from_features(x, tgt, create_graph, fn)
                else:
                    parts, logits = self._from_hook(x, tgt, create_graph, fn)
        except _LayoutError as e:  # tokens egl cannot lay out: name a layer that works
            if self.layer != "auto":
                raise
            raise unsupported_model(self.model, x, e.detail, fn) from None
        acts, weights, scale = parts
        if acts.shape[-2] * acts.shape[-1] == 1:
            self._warn_one_position(hw, fn)
        with torch.set_grad_enabled(create_graph):  # one fused epilogue for every path
            sal = cam_epilogue(acts, weights, hw if self.upsample else None, scale=scale, relu=self.relu,
                               normalize=self.normalize, backend=self.backend)
        if tgt is not None:
            tgt.settle()  # the target range, read once the whole call is queued
        if not create_graph:
            sal, logits = sal.detach(), logits.detach()
        return Explanation(sal.to(x.dtype) if x.is_floating_point() else sal, logits)

    def _check_patch_gradient(self, grad: Tensor, fn: str) -> None:
        """Once per target layer (one read): warn when the class score's gradient reaches the prefix
        tokens only. In a ViT that classifies from its class token, the last block's output (and the
        final norm) feed the head through that token alone, so the patch tokens' map is all zero and
        an alignment loss on it trains nothing."""
        name = self._target.name  # type: ignore[union-attr]
        self._token_checked.add(name)
        prefix = int(getattr(unwrap(self.model)[0], "num_prefix_tokens", 0) or 0)
        if prefix <= 0 or grad.dim() != 3 or grad.shape[1] <= prefix:
            return
        if float(grad[:, prefix:].detach().abs().amax()) == 0.0 and float(grad[:, :prefix].detach().abs().amax()) > 0:
            warnings.warn(f"{fn}: at layer '{name}' the class score's gradient reaches the prefix (class) tokens "
                          "only: the patch tokens' map is all zero, and an alignment loss on it trains nothing. "
                          "In a ViT that classifies from its class token, take Grad-CAM before the last block's "
                          "attention: layer='blocks.-1.norm1' (what layer='auto' picks).", stacklevel=5)

    def _warn_one_position(self, hw: tuple[int, int], fn: str) -> None:
        """Once per input size: a 1 x 1 map is one value per image, so every map is constant."""
        if hw in self._warned_sizes:
            return
        self._warned_sizes.add(hw)
        warnings.warn(f"{fn}: the target layer's map is 1 x 1 for {hw[0]} x {hw[1]} inputs: one value per image, so "
                      "every map is constant (all zeros once normalised) and an alignment loss on it trains "
                      "nothing. Use larger images, a layer with more positions (layer='...'), or a model with a "
                      "smaller output stride (timm: output_stride=16 or 8).", stacklevel=4)

    # ------------------------------------------------------------------------------------
    def _choose(self, available: str, fn: str) -> str:
        order = {"linear": "closed_form", "pooled": "pooled", "none": "autograd"}
        best = order[available]
        if self.path == "auto":
            return best
        allowed = {"closed_form": ["closed_form", "pooled", "autograd"],
                   "pooled": ["pooled", "autograd"], "autograd": ["autograd"]}[best]
        if self.path not in allowed:
            raise fail(fn, "path", f"one of {allowed} for {type(self.model).__name__}'s head",
                       repr(self.path), "Use path='auto'")
        return self.path

    def _from_features(self, x: Tensor, tgt: Targets | None, create_graph: bool,
                       fn: str) -> tuple[CAMParts, Tensor]:
        model: Any = self.model
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        feats, target = self._features(x, create_graph, fn)
        path = self._choose(head_kind(model, target, feats), fn)
        self.last_path = path
        fmt = target.fmt
        if path == "closed_form":
            with torch.set_grad_enabled(create_graph):
                logits = model.forward_head(feats)
                t = _pick(logits, tgt, fn, x.shape[0])
                a = _to_nchw(feats, fmt, model, hw)
                w = model.get_classifier().weight[t]  # [B, C]
                if self.detach_weights:
                    w = w.detach()
                return self.weigh_uniform(a, w.to(a.dtype), 1.0 / (a.shape[-2] * a.shape[-1])), logits
        if path == "pooled":
            return self._pooled(feats, tgt, create_graph, fn, hw)
        # autograd over the feature output
        leaf = feats if create_graph else feats.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model.forward_head(leaf)
        return self._cam_from_grad(leaf, logits, tgt, create_graph, fn, fmt, hw)

    def _features(self, x: Tensor, create_graph: bool, fn: str) -> tuple[Tensor, Target]:
        """``forward_features(x)`` and the target with the features' actual layout (checked)."""
        model: Any = self.model
        assert self._target is not None
        with torch.set_grad_enabled(create_graph):
            feats = model.forward_features(x)
        target = self._target = features_layout(model, self._target, feats)
        if not isinstance(feats, Tensor) or feats.dim() != (3 if target.fmt == "NLC" else 4):
            got = list(feats.shape) if isinstance(feats, Tensor) else f"a {type(feats).__name__}"
            want = "[B, N, C] patch tokens" if target.fmt == "NLC" else "a [B, C, H, W] map"
            raise unsupported_model(model, x, f"forward_features returned {got}, not {want}", fn)
        return feats, target

    def _pooled(self, feats: Tensor, tgt: Targets | None, create_graph: bool, fn: str,
                hw: tuple[int, int]) -> tuple[CAMParts, Tensor]:
        model: Any = self.model
        fmt = self._target.fmt  # type: ignore[union-attr]
        head_in = pool_features(feats, fmt, model)
        if not create_graph:
            head_in = head_in.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model.forward_head(head_in)
            t = _pick(logits, tgt, fn, feats.shape[0])
            g = inner_grad(logits.gather(1, t[:, None]).float().sum(), head_in,
                           create_graph=create_graph and not self.detach_weights, retain_graph=create_graph)[0]
        with torch.set_grad_enabled(create_graph):
            if fmt == "NLC":
                weights = g[:, -1]  # [B, C]: gradient at the pooled token
                a = tokens_to_grid(feats, model, hw)
            else:
                weights = g.flatten(1)
                a = _to_nchw(feats, fmt, model, hw)
            return self.weigh_uniform(a, weights, 1.0 / (a.shape[-2] * a.shape[-1])), logits

    def _cam_from_grad(self, act: Tensor, logits: Tensor, tgt: Targets | None, create_graph: bool,
                       fn: str, fmt: str, hw: tuple[int, int]) -> tuple[CAMParts, Tensor]:
        with torch.enable_grad():
            t = _pick(logits, tgt, fn, act.shape[0])
            score = logits.gather(1, t[:, None]).float().sum()  # float32: a float16 sum can overflow
            if not score.requires_grad:
                raise UnsupportedModelError(
                    f"{fn}: the logits of {type(self.model).__name__} do not depend on layer "
                    f"'{self._target.name}'. Pass layer= naming a layer on the path to the output."  # type: ignore[union-attr]
                )
            grad = inner_grad(score, act, create_graph=create_graph and not self.detach_weights,
                              retain_graph=create_graph, allow_unused=True)[0]
        if grad is None:
            grad = torch.zeros_like(act)
        if fmt == "NLC" and self._target is not None and self._target.name not in self._token_checked:
            self._check_patch_gradient(grad, fn)
        with torch.set_grad_enabled(create_graph):
            a = _to_nchw(act, fmt, self.model, hw)
            g = _to_nchw(grad, fmt, self.model, hw)
            if self.detach_weights:
                g = g.detach()
            return self.weigh(a, g), logits

    # -- the weighting: what Grad-CAM's variants (and a plugin's) override ---------------------
    def weigh_uniform(self, a: Tensor, w: Tensor, scale: float) -> CAMParts:
        """The epilogue's inputs where the gradient is the same at every position (the
        closed-form and pooled paths): ``d s_y / d A[:, k, i, j] = scale * w[:, k]``.

        Args:
            a: the target layer's activations ``[B, C, h, w]``.
            w: ``[B, C]``: ``W[y]`` of a linear head, or the gradient at the pooled features.
            scale: ``1 / (h * w)``.

        Returns:
            :data:`CAMParts`; Grad-CAM's is ``(a, w, scale)`` (``alpha = scale * w``).
        """
        return a, w, scale

    def weigh(self, a: Tensor, g: Tensor) -> CAMParts:
        """The epilogue's inputs from the gradient ``g = d s_y / d A`` (the autograd path).

        Args:
            a: the target layer's activations ``[B, C, h, w]``.
            g: the target logit's gradient, like ``a`` (detached with ``detach_weights=True``;
                float32 when it comes loss-scaled).

        Returns:
            :data:`CAMParts`; Grad-CAM's is ``(a, mean_ij g, 1)``. A per-position weighting
            returns its map summed over channels through :func:`position_map`.
        """
        return a, g.mean(dim=(2, 3)), 1.0

    def weight_input(self, t: Tensor) -> Tensor:
        """``t`` (activations) as a term of the channel weights: in :func:`weight_dtype`, and
        detached with ``detach_weights=True`` (the weights are then constants)."""
        t = t.detach() if self.detach_weights else t
        return t.to(dtype=weight_dtype(t))

    def _forward_activations(self, x: Tensor, fn: str, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """The target layer's activations ``[B, C, h, w]`` and the logits from one forward pass, no
        gradient taken (what the gradient-free Eigen-CAM and Score-CAM read); sets ``last_path``
        to ``"forward"``."""
        assert self._target is not None
        self.last_path = "forward"
        with torch.no_grad():
            if self._target.module is None:
                feats, target = self._features(x, False, fn)
                return _to_nchw(feats, target.fmt, self.model, hw).detach(), self.model.forward_head(feats)
            act, logits, fmt = self._hooked_activation(x, False, fn, track=False)
        return _to_nchw(act, fmt, self.model, hw), logits

    def _from_hook(self, x: Tensor, tgt: Targets | None, create_graph: bool,
                   fn: str) -> tuple[CAMParts, Tensor]:
        self._choose("none", fn)
        self.last_path = "autograd"
        act, logits, fmt = self._hooked_activation(x, create_graph, fn)
        return self._cam_from_grad(act, logits, tgt, create_graph, fn, fmt, (int(x.shape[-2]), int(x.shape[-1])))

    def _hooked_activation(self, x: Tensor, create_graph: bool, fn: str,
                           track: bool = True) -> tuple[Tensor, Tensor, str]:
        """The named layer's output (gradients flow from it on; ``track=False``: none, a plain
        forward), the logits, and its layout."""
        target = self._target
        assert target is not None and target.module is not None
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if track and not create_graph and _vit_tail.usable(self.model, target.module, x):  # class-token ViT
            a, x_in = _vit_tail.capture(self.model, x)
            act = a.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = _vit_tail.tail_logits(self.model, act, x_in)
            return act, logits, "NLC"
        store: dict[str, Tensor] = {}

        def hook(_m: nn.Module, _inp: Any, out: Any) -> Tensor:
            if not isinstance(out, Tensor):
                raise UnsupportedModelError(
                    f"{fn}: layer '{target.name}' returns {type(out).__name__}, not a tensor. "
                    "Pass layer= naming a module that outputs one tensor."
                )
            if create_graph or not track:
                store["a"] = out
            else:  # gradients from here on only: the trunk above ran under no_grad
                store["a"] = out.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            return store["a"].clone()  # later in-place ops must not touch the saved activation

        handle = target.module.register_forward_hook(hook)
        try:
            with torch.set_grad_enabled(create_graph):
                logits = self.model(x)
        finally:
            handle.remove()
        if "a" not in store:
            raise UnsupportedModelError(
                f"{fn}: layer '{target.name}' was not called during the forward pass of "
                f"{type(self.model).__name__}. Pass layer= naming a module the forward pass uses."
            )
        act = store["a"]
        if act.dim() not in (3, 4):
            raise UnsupportedModelError(
                f"{fn}: layer '{target.name}' outputs shape {list(act.shape)}; Grad-CAM needs a "
                "[B, C, H, W] map or [B, N, C] ViT tokens. Pass layer= naming a spatial layer."
            )
        return act, logits, "NLC" if act.dim() == 3 else map_layout(self.model, act, hw)


def in_grad_cam_family(name: str, *, fn: str = "egl.explainers.in_grad_cam_family", arg: str = "name") -> bool:
    """Whether the registered explainer ``name`` is Grad-CAM or a variant of it (a subclass of
    :class:`GradCAM`, which takes ``layer=``). An unknown name raises
    :class:`~egl.errors.ComponentNotFoundError` naming ``fn``'s argument ``arg``, with "did you mean"."""
    from egl.registry import _lookup

    cls = _lookup("explainer", name, fn, arg)
    return isinstance(cls, type) and issubclass(cls, GradCAM)


def same_maps_as_grad_cam(explainer: object) -> bool:
    """Whether ``explainer`` computes Grad-CAM's maps: a :class:`GradCAM`, or a subclass that keeps
    its channel weighting (a variant such as LayerCAM overrides it)."""
    cls = type(explainer)
    return (isinstance(explainer, GradCAM) and cls.weigh is GradCAM.weigh
            and cls.weigh_uniform is GradCAM.weigh_uniform)


def grad_cam(model: nn.Module, x: Tensor, target: Any = None, *, layer: str | nn.Module = "auto",
             create_graph: bool = False, upsample: bool = True, normalize: bool = True,
             path: str = "auto", relu: bool = True, detach_weights: bool = False) -> Tensor:
    """Functional Grad-CAM: ``GradCAM(model, layer, ...)(x, target, create_graph=...)``.

    Args:
        model: classifier returning logits ``[B, K]``.
        x: input batch.
        target: class per sample (int, list, LongTensor), or ``None`` for the predicted class.
        layer: ``"auto"``, a dotted module path, or the module itself.
        create_graph: keep the map differentiable with respect to the model's parameters.
        upsample: resize to the input (bilinear) or keep the feature resolution.
        normalize: per-sample min-max to [0, 1].
        path: ``"auto"``, ``"closed_form"``, ``"pooled"`` or ``"autograd"``.
        relu: ``False`` keeps the signed map. detach_weights: channel weights as constants.

    Returns:
        Saliency ``[B, 1, H, W]`` on the model's device.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import grad_cam
        >>> model = timm.create_model("test_resnet", num_classes=5)
        >>> grad_cam(model, torch.randn(2, 3, 64, 64), 1, upsample=False).shape
        torch.Size([2, 1, 2, 2])
    """
    return GradCAM(model, layer, upsample=upsample, normalize=normalize, path=path, relu=relu,
                   detach_weights=detach_weights)(x, target, create_graph=create_graph)

