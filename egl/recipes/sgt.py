"""Saliency-guided training, SGT (Ismail, Corrada Bravo and Feizi, "Improving Deep Learning
Interpretability by Saliency Guided Training", NeurIPS 2021; code:
github.com/ayaabdelsalam91/saliency_guided_training).

Per step: the saliency of each image is the gradient of its true-class logit with respect to
the input; the ``ratio`` (ρ) least salient pixels are replaced, giving ``x̃``; the loss is
``CE(f(x), y) + λ·KL(p(x) ‖ p(x̃))`` with ``x̃`` detached and no stop-gradient on ``p(x)``
(λ = ``kl_weight`` = 1 and ρ = 0.1, the paper's values).

Choices, all arguments unless said otherwise:

* Ranking (``rank``). The paper masks "features with small gradients"; the authors' code ranks
  the *signed* gradient, lowest first, unless its ``abs`` flag is set. Our default is
  ``rank="abs"``: pixels ranked by ``mean_c |∂s_y/∂x|``, the smallest magnitudes masked, which
  is what the paper's text describes (a large negative gradient is salient, not irrelevant).
  ``rank="signed"`` ranks ``mean_c ∂s_y/∂x`` as the code does by default.
* A pixel is one spatial position: the gradient is reduced over channels (mean, as in the code)
  and the pixel is replaced in every channel.
* Count: exactly ``k = ⌊ρ·H·W⌋`` pixels per image (floor, as the code's ``int(ρ·n)``; a 1e-9
  slack keeps ``0.29·100`` at 29). Ties are broken by ``torch.topk``.
* Replacement (``replace``): ``"mean"`` (default) puts the image's per-channel mean, taken over
  all ``H·W`` pixels of the unmasked image; ``"random"`` draws uniformly in
  ``[min_c, max_c]`` of that image's channel (the paper's description), from torch's global
  generator.
* KL: ``Σ_k p_k(x)·(log p_k(x) − log p_k(x̃))``, summed over classes and averaged over the
  batch (``F.kl_div(..., reduction="batchmean", log_target=True)``, as the code).
* One forward pass of ``x`` serves both the saliency and the loss: the saliency is
  ``torch.autograd.grad`` of ``s_y`` with respect to a detached copy of the input only
  (``retain_graph=True``), so no parameter gradient is accumulated and BatchNorm statistics
  see ``x`` once, not twice. That pass runs in the model's current mode (training mode when
  training: dropout and batch statistics as in the CE term). The masked pass of ``x̃`` also runs
  in the current mode, so in training BatchNorm statistics are updated by ``x`` and by ``x̃``,
  as in the authors' code.
* ``ratio=0`` masks nothing: the masked pass is skipped and the KL term is exactly 0 (the recipe
  is then ERM).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._amp import inner_grad
from egl._check import check_choice, check_positive, check_shape, fail
from egl.explainers.base import check_target_range
from egl.kernels.subpixel_dgrad import subpixel_input_grads
from egl.recipes.base import Phase, Recipe, builds
from egl.recipes.batch import Batch

__all__ = ["SGT", "sgt", "sgt_mask", "sgt_replace"]

RATIO = 0.1  # ρ, fraction of pixels masked (paper)
KL_WEIGHT = 1.0  # λ (paper)
RANK = "abs"  # ours; the authors' code defaults to "signed"
REPLACE = "mean"  # the code's default; "random" is the paper's description


def _check_ratio(ratio: object, fn: str, *, below_one: bool = False) -> float:
    ok = isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio
    ok = ok and (ratio < 1.0 if below_one else ratio <= 1.0)  # NaN fails both comparisons
    if not ok:
        what = "a number in [0, 1)" if below_one else "a number in [0, 1]"
        raise fail(fn, "ratio", what, repr(ratio), "Pass the fraction to remove, e.g. ratio=0.1")
    return float(ratio)


def _count(ratio: float, n: int) -> int:
    """``⌊ratio·n⌋``, robust to float error (``0.29 * 100 = 28.999...`` counts 29)."""
    return min(n, int(math.floor(ratio * n + 1e-9)))


def sgt_mask(saliency: Tensor, ratio: float) -> Tensor:
    """The ``⌊ratio·H·W⌋`` lowest-saliency pixels of each image.

    Args:
        saliency: one value per pixel (already reduced over channels; lower is masked first).
        ratio: fraction of pixels to mask, in [0, 1].

    Returns:
        A boolean mask, True where the pixel is replaced.

    Shape:
        saliency: ``B 1 H W``; returns ``B 1 H W``.

    Example:
        >>> sgt_mask(torch.arange(4.0).reshape(1, 1, 2, 2), 0.5).flatten().tolist()
        [True, True, False, False]
    """
    fn = "egl.recipes.sgt_mask"
    saliency = check_shape(saliency, "B 1 H W", fn, "saliency")
    ratio = _check_ratio(ratio, fn)
    flat = saliency.flatten(1)
    k = _count(ratio, flat.shape[1])
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        idx = flat.detach().topk(k, dim=1, largest=False).indices
        mask.scatter_(1, idx, True)
    return mask.view_as(saliency)


def sgt_replace(x: Tensor, mask: Tensor, replace: str = REPLACE) -> Tensor:
    """``x`` with the masked pixels replaced in every channel (detached).

    Args:
        x: the images.
        mask: True where a pixel is replaced (from :func:`sgt_mask`).
        replace: ``"mean"``: the image's per-channel mean over all its pixels; ``"random"``:
            uniform in ``[min, max]`` of the image's channel.

    Shape:
        x: ``B C H W``; mask: ``B 1 H W``; returns ``B C H W``.
    """
    fn = "egl.recipes.sgt_replace"
    x = check_shape(x, "B C H W", fn, "x")
    mask = check_shape(mask, "B 1 H W", fn, "mask", floating=False)
    if mask.dtype != torch.bool or mask.shape[0] != x.shape[0] or mask.shape[2:] != x.shape[2:]:
        raise fail(fn, "mask", f"a bool tensor of shape [{x.shape[0]}, 1, {x.shape[2]}, {x.shape[3]}]",
                   f"a {mask.dtype} tensor of shape {list(mask.shape)}", "Build it with egl.recipes.sgt_mask")
    check_choice(replace, ("mean", "random"), fn, "replace")
    x = x.detach()
    if replace == "mean":
        fill = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    else:
        lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        fill = lo + (hi - lo) * torch.rand_like(x)
    return torch.where(mask, fill, x)


class SGT(Recipe):
    """Saliency-guided training: CE plus KL between the outputs on ``x`` and on ``x`` with its
    least salient pixels replaced (see the module docstring for every choice).

    Args:
        model: the classifier (any ``nn.Module`` returning logits ``[B, K]``).
        ratio: ρ, fraction of pixels masked per image (0.1, the paper's value).
        kl_weight: λ (1.0, the paper's value).
        rank: ``"abs"`` (default, ours: smallest ``|gradient|`` masked) or ``"signed"`` (the code's
            default: most negative gradient masked first).
        replace: ``"mean"`` (default) or ``"random"``.
        lr: learning rate (5e-5). weight_decay: (0). optimizer: ``"adam"`` (see
            :mod:`egl.recipes.optimizer`).

    Example:
        >>> import timm, torch
        >>> from egl.recipes.sgt import sgt
        >>> recipe = sgt(timm.create_model("test_resnet", num_classes=3))
        >>> terms = recipe.compute_phase("classifier", (torch.randn(2, 3, 32, 32), torch.tensor([0, 2])), 0)
        >>> sorted(terms)
        ['ce', 'kl', 'total']
    """

    name = "sgt"

    def __init__(self, model: nn.Module, *, ratio: float = RATIO, kl_weight: float = KL_WEIGHT,
                 rank: str = RANK, replace: str = REPLACE, lr: float = 5e-5, weight_decay: float = 0.0,
                 optimizer: str | dict[str, Any] = "adam") -> None:
        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)
        fn = "egl.recipes.sgt"
        self.ratio = _check_ratio(ratio, fn)
        self.kl_weight = check_positive(kl_weight, fn, "kl_weight")
        check_choice(rank, ("abs", "signed"), fn, "rank")
        check_choice(replace, ("mean", "random"), fn, "replace")
        self.rank, self.replace = rank, replace

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._classifier_terms)]

    def saliency(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Logits of ``x`` (with their graph) and the per-pixel ranking saliency (detached).

        The saliency is ``mean_c |∂s_y/∂x|`` (``rank="abs"``) or ``mean_c ∂s_y/∂x``, taken with
        ``torch.autograd.grad`` on the input only: parameters get no gradient from it.

        Shape:
            x: ``B C H W``; y: ``B``; returns ``B K`` and ``B 1 H W``.
        """
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            with subpixel_input_grads(self.model):  # the stem's input gradient in a faster form
                logits = self._logits(leaf)
            y = check_target_range(y, logits.shape[1], "egl.recipes.sgt")
            (g,) = inner_grad(logits.gather(1, y[:, None]).float().sum(), leaf, retain_graph=True)
        sal = (g.abs() if self.rank == "abs" else g).mean(dim=1, keepdim=True)
        return logits, sal

    def _classifier_terms(self, batch: Batch, step: int) -> dict[str, Tensor]:
        self.model.train(self.training)
        x, y = batch.x, batch.y
        if _count(self.ratio, x.shape[2] * x.shape[3]) == 0:
            logits = self._logits(x)
            ce = F.cross_entropy(logits, check_target_range(y, logits.shape[1], "egl.recipes.sgt"))
            kl = ce.new_zeros(())
        else:
            logits, sal = self.saliency(x, y)
            ce = F.cross_entropy(logits, y)
            x_masked = sgt_replace(x, sgt_mask(sal, self.ratio), self.replace)
            kl = F.kl_div(F.log_softmax(self._logits(x_masked), dim=1), F.log_softmax(logits, dim=1),
                          reduction="batchmean", log_target=True)
        return {"ce": ce, "kl": kl, "total": ce + self.kl_weight * kl}


@builds(SGT)
def sgt(model: nn.Module, **kwargs: Any) -> SGT:
    """Build an :class:`SGT` recipe: ``recipes.sgt(model, ratio=0.1).fit(loader, steps=1000)``."""
    return SGT(model, **kwargs)
