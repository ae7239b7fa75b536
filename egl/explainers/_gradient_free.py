"""The call shared by gradient-free CAMs (Eigen-CAM, Score-CAM): one forward pass to the target
layer's activations, no gradient, then the Grad-CAM epilogue on what :meth:`parts` makes of them."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from egl._check import fail
from egl.backbones import _LayoutError, resolve_target, unsupported_model
from egl.explainers.base import Explanation, targets
from egl.explainers.grad_cam import CAMParts, GradCAM, _pick
from egl.kernels.cam_epilogue import cam_epilogue

__all__ = ["GradientFreeCAM", "no_class_weighting"]


def no_class_weighting(cam: GradCAM) -> Exception:
    """The error for a gradient-free CAM passed to ``class_maps(weighting=...)``."""
    name = type(cam).__name__
    fix = (f"Call {name}(model)(x) once: its map is the same for every class" if getattr(cam, "class_free", False)
           else f"Call {name}(model)(x, target) per class instead")
    return fail("egl.explainers.class_maps", "weighting", "a Grad-CAM variant weighting channels by the gradient",
                f"{name} (gradient-free: its map has no per-class channel weighting)", fix)


class GradientFreeCAM(GradCAM):
    """A :class:`~egl.explainers.GradCAM` whose map comes from the activations (and forward passes)
    alone: the target layer is resolved as Grad-CAM's, no backward runs, inference only."""

    differentiable = False

    def parts(self, x: Tensor, acts: Tensor, t: Tensor) -> CAMParts:  # pragma: no cover - abstract
        """The epilogue's inputs from the input, the activations ``[B, C, h, w]`` and the targets."""
        raise NotImplementedError

    def weigh_uniform(self, a: Tensor, w: Tensor, scale: float) -> CAMParts:
        raise no_class_weighting(self)

    def weigh(self, a: Tensor, g: Tensor) -> CAMParts:
        raise no_class_weighting(self)

    def _explain(self, x: Tensor, target: Any, create_graph: bool) -> Explanation:
        fn = f"egl.explainers.{self.name}"
        x = self._check_input(x, create_graph)  # (refuses create_graph=True)
        tgt = targets(target, x.shape[0], fn, x.device)
        if self._target is None or self._probed or self._stale_split():
            self._target = resolve_target(self.model, self.layer, x, fn=fn)
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        try:
            acts, logits = self._forward_activations(x, fn, hw)
        except _LayoutError as e:  # tokens egl cannot lay out: name a layer that works
            if self.layer != "auto":
                raise
            raise unsupported_model(self.model, x, e.detail, fn) from None
        t = _pick(logits, tgt, fn, x.shape[0])
        if tgt is not None:
            tgt.settle()  # now: a wrong target never costs Score-CAM's C forward passes
        with torch.no_grad():
            a, w, scale = self.parts(x, acts, t)
            if a.shape[-2] * a.shape[-1] == 1:
                self._warn_one_position(hw, fn)
            sal = cam_epilogue(a, w, hw if self.upsample else None, scale=scale, relu=self.relu,
                               normalize=self.normalize, backend=self.backend)
        return Explanation(sal.to(x.dtype) if x.is_floating_point() else sal, logits.detach())
