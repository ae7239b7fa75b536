"""Any explainer's maps averaged over noisy (and flipped) copies of the input: SmoothGrad for every explainer.

Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017: the average of a map over
copies ``x + N(0, sigma^2)``, ``sigma = noise * (max(x) - min(x))`` per image (the paper finds a
noise level of 10-20 % best). pytorch-grad-cam's ``aug_smooth`` averages over flips instead;
``flip=True`` flips every other copy horizontally (and its map back). The copies of all images go
through the wrapped explainer in batches, with the class of each image (its prediction on the
clean image when ``target`` is None) repeated.

Choices (ours, configurable):

* ``samples=16`` copies (the paper uses 50; the cost is ``samples`` calls of the wrapped
  explainer per image, plus one forward pass for the clean image's logits), sent through the
  wrapped explainer one copy of the batch at a time (``batch_size=None``: ``B`` images per
  call, the memory of the wrapped explainer's own call) or in chunks of ``batch_size``.
  With ``create_graph=True`` every copy's graph is kept until the backward: memory grows with
  ``samples`` whatever the chunks.
* In training mode the clean pass updates BatchNorm's running statistics as any forward
  does; the copies' passes do not (their statistics are put back), so the model evaluated
  afterwards is the one an unsmoothed explainer would leave.
* The same ``samples`` noise patterns for every image of a call, drawn from ``seed`` (default 0;
  scaled by each image's own range): a map does not depend on which other images share its
  batch, nor on the global random state, so calls repeat. ``seed=None`` draws fresh noise from
  torch's global generator at every call.
* The wrapped explainer's maps (min-max normalised by default) are averaged, then the average is
  min-max normalised again (``normalize=True``), as pytorch-grad-cam's ``aug_smooth`` averages
  normalised maps. (SmoothGrad proper averages raw gradients: wrap
  ``InputGradient(model, absolute=False, normalize=False)``.)
* ``flip=True`` needs an even ``samples`` (half the copies flipped). A flipped map is flipped
  back, which at an even input size is off by up to the layer's stride minus one pixel
  (stride-2 layers pad asymmetrically), as in pytorch-grad-cam: a coarse map is blurred by
  about one of its cells.
* The seeded noise (``seed=0``) is the same at every call, also in training; for a training
  loss, ``seed=None`` draws new noise each step.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import batch_of_one, check_flag, check_logits, describe, fail
from egl._transfer import upload
from egl.explainers._postprocess import minmax_normalize
from egl.explainers.base import Explainer, Explanation, Targets, explained_model, targets

__all__ = ["SmoothedExplainer", "smoothed"]

_FN = "egl.explainers.SmoothedExplainer"


@contextlib.contextmanager
def _scratch_buffers(model: nn.Module) -> Iterator[None]:
    """In training mode, the block's forward passes update copies of the model's buffers, and the
    module gets its own tensors back on exit, untouched (copied back in place they would break a
    backward through the block's graph, which saved them)."""
    if not any(m.training for m in model.modules()):  # (a submodule in training mode moves statistics too)
        yield
        return
    own = [(m, name, buf) for m in model.modules() for name, buf in m._buffers.items() if buf is not None]
    for m, name, buf in own:
        m._buffers[name] = buf.detach().clone()
    try:
        yield
    finally:
        for m, name, buf in own:
            m._buffers[name] = buf


class SmoothedExplainer(Explainer):
    """An explainer's maps averaged over ``samples`` noisy (optionally flipped) copies of each image.

    Args:
        model: classifier returning logits ``[B, K]``.
        explainer: the explainer to smooth: a registered name (default ``"grad_cam"``), built on
            ``model`` with ``explainer_kwargs``, or an :class:`Explainer` bound to ``model``.
        samples: copies per image (16).
        noise: the noise's standard deviation as a share of each image's value range (0.15); 0
            adds none (with ``flip``: flips alone).
        flip: flip every other copy horizontally, its map flipped back (False).
        seed: the noise patterns' seed (0), or None for torch's global generator.
        batch_size: most copies per call of the wrapped explainer (None: one copy of the batch,
            ``B`` images, per call).
        normalize: min-max normalise the average (True).
        explainer_kwargs: arguments of the wrapped explainer (e.g. ``layer="layer3"``).

    The maps are differentiable (``create_graph=True``) when the wrapped explainer's are.

    Shape:
        x: ``B C H W``; returns the wrapped explainer's map shape, ``B 1 H W`` by default.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import SmoothedExplainer
        >>> model = timm.create_model("test_resnet", num_classes=5).eval()
        >>> smooth = SmoothedExplainer(model, "grad_cam", samples=4, flip=True, layer="layer3")
        >>> smooth(torch.randn(2, 3, 64, 64), target=[0, 3]).shape
        torch.Size([2, 1, 64, 64])
    """

    name = "smoothed"

    def __init__(self, model: nn.Module, explainer: str | Explainer = "grad_cam", *, samples: int = 16,
                 noise: float = 0.15, flip: bool = False, seed: int | None = 0, batch_size: int | None = None,
                 normalize: bool = True, **explainer_kwargs: Any) -> None:
        super().__init__(model, normalize=normalize)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise fail(_FN, "samples", "an int >= 1", describe(samples), "Pass e.g. samples=16")
        if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < float("inf"):
            raise fail(_FN, "noise", "a share of the image's range >= 0", repr(noise)[:60],
                       "Pass e.g. noise=0.15 (SmoothGrad's 10-20 %)")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
            raise fail(_FN, "seed", "None or an int in [0, 2**63)", repr(seed)[:60], "Pass e.g. seed=0")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise fail(_FN, "batch_size", "None or an int >= 1", describe(batch_size), "Pass e.g. batch_size=64")
        self.flip = check_flag(flip, _FN, "flip")
        if self.flip and samples % 2:
            raise fail(_FN, "samples", "an even number with flip=True (half the copies flipped)", repr(samples),
                       f"Pass samples={samples + 1}")
        if noise == 0 and not self.flip and samples > 1:
            raise fail(_FN, "samples", "1 when noise=0 and flip=False (every copy would be the image itself)",
                       repr(samples), "Pass noise > 0 or flip=True, or samples=1")
        self.samples, self.noise, self.seed, self.batch_size = samples, float(noise), seed, batch_size
        if isinstance(explainer, Explainer):
            if explainer_kwargs:
                raise fail(_FN, "explainer_kwargs", "none with an explainer instance (it is built already)",
                           repr(sorted(explainer_kwargs)), "Build the explainer with them, or pass its name")
            if explainer.model is not explained_model(model):
                raise fail(_FN, "explainer", "an explainer bound to the same model", f"one bound to "
                           f"{type(explainer.model).__name__} at {id(explainer.model):#x}",
                           "Build the explainer on this model, or pass its name")
            self.base = explainer
        elif isinstance(explainer, str):
            from egl.registry import create

            if explainer == self.name:
                raise fail(_FN, "explainer", "another explainer's name", repr(explainer), "Pass e.g. 'grad_cam'")
            self.base = create("explainer", explainer, model, **explainer_kwargs)
        else:
            raise fail(_FN, "explainer", "a registered explainer's name or an Explainer", describe(explainer),
                       "Pass e.g. explainer='grad_cam'")
        self.differentiable = self.base.differentiable  # type: ignore[misc]  # (per instance: a wrapper's own)
        self._noise_cache: tuple[tuple[Any, ...], Tensor] | None = None

    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        """Smoothed maps and the clean image's logits (``target=None``: its predicted class)."""
        with batch_of_one("egl.explainers.smoothed", "x"):
            return self._explain(x, target, create_graph)

    def _noise(self, x: Tensor) -> Tensor:
        """``[samples, 1, C, H, W]`` standard normal patterns in ``x``'s dtype, on its device."""
        shape = (self.samples, 1, *x.shape[1:])
        if self.seed is None:
            return torch.randn(shape, device=x.device, dtype=x.dtype)
        key = (shape, x.device, x.dtype, self.seed)
        if self._noise_cache is None or self._noise_cache[0] != key:  # drawn on the host once (repeatable)
            z = torch.randn(shape, generator=torch.Generator().manual_seed(self.seed))
            self._noise_cache = (key, upload(z, x.device, x.dtype))
        return self._noise_cache[1]

    def _explain(self, x: Tensor, target: Any, create_graph: bool) -> Explanation:
        fn = "egl.explainers.smoothed"
        x = self._check_input(x, create_graph)
        b = x.shape[0]
        tgt = targets(target, b, fn, x.device)
        with torch.set_grad_enabled(create_graph):
            logits = check_logits(self.model(x), b, fn)
        k = logits.shape[1]
        t = logits.detach().argmax(1) if tgt is None else tgt.index(k, fn)  # (checked: in [0, k))
        flat = x.detach().flatten(1)
        scale = (flat.amax(1) - flat.amin(1)).view(1, b, 1, 1, 1) * self.noise  # [1, B, 1, 1, 1]
        # under create_graph, a computed x stays in the graph (the noise is a constant), as the base's own does
        src = x if create_graph and x.requires_grad else x.detach()
        copies = src[None] + scale * self._noise(x) if self.noise > 0 else src[None].expand(self.samples, *x.shape)
        flipped = torch.arange(self.samples, device=x.device) % 2 == 1 if self.flip else None
        if flipped is not None:
            copies = torch.where(flipped.view(-1, 1, 1, 1, 1), copies.flip(-1), copies)
        copies = copies.reshape(self.samples * b, *x.shape[1:])
        repeated = t.repeat(self.samples)
        step = self.batch_size or b
        # egl's explainers take the chunks' targets with their known range (no device read per chunk);
        # an explainer of a plugin gets plain class indices, as the documented target types say
        known = type(self.base).__module__.startswith("egl.")

        def chunk_targets(i: int) -> Any:
            return Targets(repeated[i:i + step], (0, k - 1)) if known else repeated[i:i + step]

        with _scratch_buffers(self.model):  # the copies' passes leave BatchNorm's running statistics alone
            maps = torch.cat([self.base.explain(copies[i:i + step], chunk_targets(i), create_graph=create_graph)
                              .saliency for i in range(0, copies.shape[0], step)])
        with torch.set_grad_enabled(create_graph):
            maps = maps.view(self.samples, b, *maps.shape[1:])
            if flipped is not None:
                maps = torch.where(flipped.view(-1, 1, 1, 1, 1), maps.flip(-1), maps)
            sal = maps.float().mean(0)
            if self.normalize:
                sal = minmax_normalize(sal)
            sal = sal.to(maps.dtype)
        if not create_graph:
            sal, logits = sal.detach(), logits.detach()
        return Explanation(sal, logits)

    def __repr__(self) -> str:
        return (f"SmoothedExplainer({self.base!r}, samples={self.samples}, noise={self.noise}, flip={self.flip}, "
                f"seed={self.seed})")


def smoothed(model: nn.Module, x: Tensor, target: Any = None, *, explainer: str | Explainer = "grad_cam",
             samples: int = 16, noise: float = 0.15, flip: bool = False, seed: int | None = 0,
             batch_size: int | None = None, create_graph: bool = False, normalize: bool = True,
             **explainer_kwargs: Any) -> Tensor:
    """Functional form of :class:`SmoothedExplainer`; returns the smoothed maps.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import smoothed
        >>> model = timm.create_model("test_resnet", num_classes=5).eval()
        >>> smoothed(model, torch.randn(2, 3, 64, 64), explainer="input_gradient", samples=4).shape
        torch.Size([2, 1, 64, 64])
    """
    return SmoothedExplainer(model, explainer, samples=samples, noise=noise, flip=flip, seed=seed,
                             batch_size=batch_size, normalize=normalize, **explainer_kwargs)(
        x, target, create_graph=create_graph)
