"""Saliency-guided dropout, SGDrop (Bertoin et al., 2024).

Idea (the paper): find the most salient activations of the last feature map by
gradient × activation and drop them during training, so the network cannot lean on a few
features; nothing is dropped at test time. No code was published, so every detail below is
our choice (arguments where it matters):

* Feature map: ``A = model.forward_features(x)`` of a timm model; logits
  ``= model.forward_head(A)``. Any model with both methods works; others raise
  :class:`egl.UnsupportedModelError`.
* Saliency: ``ReLU(A ⊙ ∂s_y/∂A)`` per element, ``s_y`` the true-class logit. The gradient is
  ``torch.autograd.grad`` of ``forward_head(A_leaf)`` with respect to a detached copy
  ``A_leaf`` only: one extra pass through the head, none through the trunk, no parameter
  gradient. That head pass runs in the model's current mode; buffers it changes (a head with
  BatchNorm in training mode) are put back, so statistics are updated once per step.
* Drop (``ratio`` = 0.1, ``granularity``): ``"element"`` (default) ranks the ``n = C·H·W``
  elements of each sample and drops the top ``k = ⌊ratio·n⌋``; ``"spatial"`` sums the saliency
  over channels, ranks the ``H·W`` positions and drops the top ``⌊ratio·H·W⌋`` positions in
  every channel. Elements (positions) of zero saliency are never dropped: they carry no
  positive evidence, and dropping one with ``A > 0`` and negative gradient would *raise* the
  true-class logit. So exactly ``k`` are dropped when at least ``k`` are salient (the usual
  case), all the salient ones otherwise. Ties are broken by ``torch.topk``.
* Rescale (``rescale=True``): kept activations are multiplied by ``n / (n − d)``, ``d`` the number
  actually dropped in that sample (inverted dropout, so the head sees the same expected sum).
* Every step drops in every sample; the keep mask is constant (no gradient through the ranking).
* Loss: ``CE(forward_head(A ⊙ keep), y)``, the only term. ``model(x)`` is never changed:
  evaluation and inference see no drop.
* ViT tokens: ``forward_features`` gives ``[B, N, C]`` (prefix tokens included); elements are
  the ``N·C`` token channels, positions (``"spatial"``) are the ``N`` tokens. For a ViT that
  classifies from its class token only that token reaches the head, so only its features have
  non-zero saliency and are dropped (fewer than ``k`` when ``ratio·N·C`` exceeds their count).
  Channels-last maps (``B H W C``, as some timm models give) are handled like tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._amp import inner_grad
from egl._check import check_choice, check_tensor, fail
from egl.backbones import is_timm_model, resolve_target
from egl.errors import UnsupportedModelError
from egl.explainers.base import check_target_range
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["SGDrop", "sgdrop", "sgdrop_mask"]

RATIO = 0.1  # ours (no published value)
GRANULARITY = "element"  # ours
RESCALE = True  # ours (inverted-dropout convention)


def _check_ratio(ratio: object, fn: str) -> float:
    ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0
    if not ok:  # NaN fails the comparison too
        raise fail(fn, "ratio", "a number in [0, 1)", repr(ratio),
                   "Pass the fraction of activations to drop, e.g. ratio=0.1")
    return float(ratio)


def sgdrop_mask(saliency: Tensor, ratio: float, *, granularity: str = GRANULARITY,
                channel_dim: int = 1) -> Tensor:
    """Which activations SGDrop removes: the top ``⌊ratio·n⌋`` of positive saliency per sample.

    Args:
        saliency: non-negative saliency of each activation (``ReLU(A ⊙ ∂s_y/∂A)``).
        ratio: fraction to drop, in [0, 1).
        granularity: ``"element"`` ranks every element; ``"spatial"`` sums over ``channel_dim``
            and drops whole positions (all channels).
        channel_dim: the channel axis for ``"spatial"`` (1 for ``B C H W``, -1 for tokens).

    Returns:
        A boolean mask shaped like ``saliency``, True where dropped. Zero-saliency entries
        are never dropped, so fewer than ``⌊ratio·n⌋`` are when fewer are salient.

    Shape:
        saliency: ``B ...`` (at least 2-D); returns the same shape.

    Example:
        >>> sgdrop_mask(torch.tensor([[0.0, 3.0, 1.0, 2.0]]), 0.5).tolist()
        [[False, True, False, True]]
    """
    fn = "egl.recipes.sgdrop_mask"
    saliency = check_tensor(saliency, fn, "saliency", floating=True)
    ratio = _check_ratio(ratio, fn)
    check_choice(granularity, ("element", "spatial"), fn, "granularity")
    if saliency.dim() < 2 or (granularity == "spatial" and saliency.dim() < 3):
        need = "3" if granularity == "spatial" else "2"
        raise fail(fn, "saliency", f"a tensor with at least {need} dimensions (batch first)",
                   f"shape {list(saliency.shape)}", "Pass one saliency value per activation")
    sal = saliency.detach()
    if granularity == "spatial":
        cd = channel_dim % sal.dim()
        if cd == 0:
            raise fail(fn, "channel_dim", "a non-batch axis", repr(channel_dim), "Use 1 or -1")
        sal = sal.sum(dim=cd, keepdim=True)
    flat = sal.flatten(1)
    k = min(flat.shape[1], int(math.floor(ratio * flat.shape[1] + 1e-9)))
    drop = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        top = flat.topk(k, dim=1)
        drop.scatter_(1, top.indices, top.values > 0)
    return drop.view_as(sal).expand_as(saliency)


class SGDrop(Recipe):
    """Saliency-guided dropout of the last feature map during training (see the module
    docstring for every choice).

    Args:
        model: a classifier with timm's ``forward_features`` / ``forward_head`` split.
        ratio: fraction of activations (or positions) dropped per sample (0.1, ours).
        granularity: ``"element"`` (default: over ``C·H·W``, or ``N·C`` tokens) or ``"spatial"``.
        rescale: multiply kept activations by ``n / (n − dropped)`` (True).
        lr: learning rate (5e-5). weight_decay: (0). optimizer: ``"adam"`` (see
            :mod:`egl.recipes.optimizer`).

    Raises:
        UnsupportedModelError: the model lacks ``forward_features`` or ``forward_head``.

    Example:
        >>> import timm, torch
        >>> from egl.recipes.sgdrop import sgdrop
        >>> recipe = sgdrop(timm.create_model("test_resnet", num_classes=3))
        >>> terms = recipe.compute_phase("classifier", (torch.randn(2, 3, 32, 32), torch.tensor([0, 2])), 0)
        >>> sorted(terms)
        ['ce', 'total']
    """

    name = "sgdrop"

    def __init__(self, model: nn.Module, *, ratio: float = RATIO, granularity: str = GRANULARITY,
                 rescale: bool = RESCALE, lr: float = 5e-5, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        fn = "egl.recipes.sgdrop"
        missing = [a for a in ("forward_features", "forward_head") if not callable(getattr(model, a, None))]
        if missing:
            raise UnsupportedModelError(
                f"{fn}: SGDrop drops activations of the last feature map, so it needs a model split "
                f"into forward_features(x) -> features and forward_head(features) -> logits, as timm "
                f"models are; {type(model).__name__} has no {' or '.join(missing)}. Use a timm model, "
                "or add both methods to your model.")
        self.ratio = _check_ratio(ratio, fn)
        check_choice(granularity, ("element", "spatial"), fn, "granularity")
        if not isinstance(rescale, bool):
            raise fail(fn, "rescale", "a bool", repr(rescale), "Pass rescale=True or rescale=False")
        self.granularity, self.rescale = granularity, rescale

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def _channel_dim(self, feats: Tensor) -> int:
        if self.granularity != "spatial" or feats.dim() != 4:
            return -1  # tokens [B, N, C] (unused for "element")
        if is_timm_model(self.model) and resolve_target(self.model, fn="egl.recipes.sgdrop").fmt == "NHWC":
            return -1  # channels-last maps [B, H, W, C]
        return 1

    def saliency(self, feats: Tensor, y: Tensor) -> Tensor:
        """``ReLU(A ⊙ ∂s_y/∂A)`` for the features ``A`` (detached; no parameter gradients).

        Shape:
            feats: the output of ``forward_features`` (``B C H W`` or ``B N C``); y: ``B``;
            returns the shape of ``feats``.
        """
        leaf = feats.detach().requires_grad_(True)
        saved = [b.detach().clone() for b in self.model.buffers()] if self.model.training else []
        try:
            with torch.enable_grad():
                logits = self.model.forward_head(leaf)
                y = check_target_range(y, logits.shape[1], "egl.recipes.sgdrop")
                (g,) = inner_grad(logits.gather(1, y[:, None]).float().sum(), leaf)
        finally:
            with torch.no_grad():  # through .data: the loss graph saved these buffers; no sync
                for b, s in zip(self.model.buffers(), saved):
                    b.data.copy_(s)
        return F.relu(leaf.detach() * g)

    def keep_mask(self, feats: Tensor, y: Tensor) -> Tensor:
        """The multiplier applied to ``feats``: 0 where dropped, 1 (or the rescale factor) elsewhere.

        Shape:
            feats: ``B ...``; y: ``B``; returns the shape of ``feats``.
        """
        drop = sgdrop_mask(self.saliency(feats, y), self.ratio, granularity=self.granularity,
                           channel_dim=self._channel_dim(feats))
        keep = (~drop).to(feats.dtype)
        if self.rescale:  # counted in float32: a 16-bit count passes 65504 (2048x7x7) and turns inf
            n = keep[0].numel()
            kept = (~drop).flatten(1).sum(1, dtype=torch.float32)
            keep = keep * (n / kept).to(feats.dtype).view(-1, *([1] * (keep.dim() - 1)))
        return keep

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        self.model.train(self.training)
        feats = self.model.forward_features(batch.x)
        if self.ratio > 0:
            feats = feats * self.keep_mask(feats, batch.y)
        logits = self.model.forward_head(feats)
        ce = F.cross_entropy(logits, check_target_range(batch.y, logits.shape[1], "egl.recipes.sgdrop"))
        return {"ce": ce, "total": ce}


@builds(SGDrop)
def sgdrop(model: nn.Module, **kwargs: Any) -> SGDrop:
    """Build an :class:`SGDrop` recipe: ``recipes.sgdrop(model, ratio=0.1).fit(loader, steps=1000)``."""
    return SGDrop(model, **kwargs)
