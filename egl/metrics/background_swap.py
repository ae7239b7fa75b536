"""Does the prediction follow the object or its background? Foregrounds moved onto other backgrounds.

Xiao et al., "Noise or Signal: The Role of Image Backgrounds in Object Recognition", ICLR 2021
(the ImageNet-9 background challenge), built from any images with foreground masks:

* ``only_fg``: the object on a blank background (``baseline``, 0 by default);
* ``mixed_same``: the object on the background of another image *of the same class*;
* ``mixed_rand``: the object on the background of an image *of another class*;
* ``bg_gap`` = accuracy(mixed_same) − accuracy(mixed_rand), over the images that have both:
  what the background adds when it agrees with the class. A model that decides by the object
  has a gap near 0 (the paper takes each accuracy over its whole variant set);
* ``follows``: among the ``mixed_rand`` images, the share predicted as the *donor's* class (the
  background's), what the shortcut rate measures on data built with a known shortcut (egl's
  addition).

A composite is ``m · x_i + (1 − m) · background_j`` with ``m`` the mask of image ``i`` (soft
masks blend). egl's choices where the paper's data set differs, each an argument:

* ``fill="impute"`` (default): the donor's own object is removed from its background and filled
  by ROAD's linear imputation from the pixels around it (:func:`egl.metrics.noisy_linear_imputation`,
  no noise), so the donor's object does not show through where the new object does not cover it.
  Xiao et al. tiled background patches instead ("Only-BG-T"); ``fill="baseline"`` leaves the
  blank value there (their "Only-BG-B").
* Donors are drawn from the same batch (the paper draws them from the whole test set: give
  batches drawn at random from it, as the experiments do), uniformly among the images of the
  same class (another image) or of the other classes, from ``generator`` (a CPU generator;
  torch's global one when None). An image with no such donor in the batch has no score for that
  variant (``valid_same`` / ``valid_rand`` False).
* A pixel is foreground where its mask is at least ``threshold`` (0.5), decided in float32
  whatever the images' dtype. An image with no foreground pixel (nothing to move; also a
  placeholder mask of an unannotated image) or no background pixel (nothing of the background
  shows) has no score and lends no background.
* With ``fill="impute"`` every image's background is imputed (one sparse solve per image:
  0.04-0.13 s for a 224-px image on one CPU thread); ``fill="baseline"`` costs nothing. They
  depend on the images and masks only, not on the model: :func:`remove_objects` makes them,
  and ``backgrounds=`` takes them made once for several models.

Example:
    >>> import torch
    >>> from egl.metrics import background_swap
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).eval()
    >>> x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 0, 1, 1])
    >>> mask = torch.zeros(4, 1, 8, 8); mask[..., 2:6, 2:6] = 1
    >>> r = background_swap(model, x, y, mask, generator=torch.Generator().manual_seed(0))
    >>> sorted(r.means())
    ['bg_fg', 'bg_follow', 'bg_gap', 'bg_rand', 'bg_same']
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from egl._check import check_choice, check_finite, check_positive, check_same_batch, describe, fail
from egl._masks import as_mask, check_aspect, resize_mask
from egl._transfer import upload
from egl.metrics._common import check_labels, model_logits
from egl.metrics._explainers import check_model_and_images

__all__ = ["background_swap", "remove_objects", "BackgroundSwapResult"]

FN = "egl.metrics.background_swap"
FILLS = ("impute", "baseline")


@dataclass(frozen=True)
class BackgroundSwapResult:
    """Per-image outcomes ``[B]`` (CPU). A variant's entries where its ``valid_*`` is False are
    False and count in no mean.

    Attributes:
        only_fg, mixed_same, mixed_rand: whether the prediction on that composite is the label.
        follows: whether the ``mixed_rand`` prediction is the donor's class.
        same_donor, rand_donor: the donor's index in the batch (-1: none).
        valid_fg, valid_same, valid_rand: the image has that composite.
    """

    only_fg: Tensor
    mixed_same: Tensor
    mixed_rand: Tensor
    follows: Tensor
    same_donor: Tensor
    rand_donor: Tensor
    valid_fg: Tensor
    valid_same: Tensor
    valid_rand: Tensor

    def means(self) -> dict[str, float]:
        """``bg_fg``, ``bg_same``, ``bg_rand`` (accuracies), ``bg_gap`` (same − rand over the images
        that have both), ``bg_follow``: fractions, NaN where no image counts."""
        def mean(hit: Tensor, valid: Tensor) -> float:
            return float(hit[valid].float().mean()) if bool(valid.any()) else float("nan")

        both = self.valid_same & self.valid_rand
        return {"bg_fg": mean(self.only_fg, self.valid_fg), "bg_same": mean(self.mixed_same, self.valid_same),
                "bg_rand": mean(self.mixed_rand, self.valid_rand),
                "bg_gap": mean(self.mixed_same, both) - mean(self.mixed_rand, both),
                "bg_follow": mean(self.follows, self.valid_rand)}


def background_swap(model: nn.Module, x: Tensor, y: Tensor, mask: Tensor, *, fill: str = "impute",
                    baseline: float = 0.0, threshold: float = 0.5, generator: torch.Generator | None = None,
                    backgrounds: Tensor | None = None) -> BackgroundSwapResult:
    """Predictions on ``x``'s objects alone, on backgrounds of their class and of other classes.

    Args:
        model: the classifier, in eval mode (its outputs are ``[B, num_classes]`` logits).
        x: images.
        y: their classes.
        mask: their foreground masks in [0, 1] (resized to the images when their size differs).
        fill: what fills a donor's object: ``"impute"`` (ROAD's linear imputation, default) or
            ``"baseline"``.
        baseline: the blank value (``only_fg``'s background; ``fill="baseline"``'s fill).
        threshold: a donor pixel at least this much foreground is removed from its background.
        generator: CPU generator of the donors.
        backgrounds: ``remove_objects(x, mask, fill=fill, baseline=baseline, threshold=threshold)``
            made beforehand (for scoring several models on the same images; made here when None).

    Shape:
        x: ``B C H W``; y: ``B``; mask: ``B 1 h w`` or ``B h w``; backgrounds: as x.
    """
    x = check_model_and_images(model, x, FN)
    if model.training:
        raise fail(FN, "model", "a model in eval mode", "a model in train mode (dropout and batch statistics "
                   "change the predictions)", "Call model.eval() first")
    if backgrounds is not None and (not isinstance(backgrounds, Tensor) or backgrounds.shape != x.shape):
        got = f"shape {tuple(backgrounds.shape)}" if isinstance(backgrounds, Tensor) else describe(backgrounds)
        raise fail(FN, "backgrounds", f"a tensor of the images' shape {tuple(x.shape)} (remove_objects(x, mask))",
                   got, "Pass remove_objects(x, mask, ...) of these images, or None")
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise fail(FN, "generator", "a CPU torch.Generator (the donors are drawn on the CPU)", describe(generator),
                   "Pass torch.Generator().manual_seed(0), or None")
    fg_pixels, m = _foreground(x, mask, fill, baseline, threshold, FN)
    with torch.no_grad():
        num_classes = model_logits(model, x[:1], FN).shape[1]
        labels = check_labels(y, x, num_classes, FN, "y", batch_arg="x").cpu()
        flat = fg_pixels.flatten(1)
        valid_fg = (flat.any(1) & ~flat.all(1)).cpu()  # something to move, and background around it
        same, rand = _donors(labels, valid_fg, generator)
        if backgrounds is None:
            backgrounds = _backgrounds(x, fg_pixels, fill, float(baseline))
        else:
            backgrounds = check_finite(upload(backgrounds, x.device, x.dtype), FN, "backgrounds")
        fg = m * x
        blank = torch.full_like(x, float(baseline))
        behind = (blank, backgrounds[upload(same.clamp(min=0), x.device)],
                  backgrounds[upload(rand.clamp(min=0), x.device)])
        pred = torch.stack([model_logits(model, fg + (1 - m) * b, FN).argmax(1).cpu() for b in behind])
    valid_same, valid_rand = valid_fg & (same >= 0), valid_fg & (rand >= 0)
    donor_class = labels[rand.clamp(min=0)]
    return BackgroundSwapResult(
        only_fg=(pred[0] == labels) & valid_fg, mixed_same=(pred[1] == labels) & valid_same,
        mixed_rand=(pred[2] == labels) & valid_rand, follows=(pred[2] == donor_class) & valid_rand,
        same_donor=same, rand_donor=rand, valid_fg=valid_fg, valid_same=valid_same, valid_rand=valid_rand)


def remove_objects(x: Tensor, mask: Tensor, *, fill: str = "impute", baseline: float = 0.0,
                   threshold: float = 0.5) -> Tensor:
    """``x`` with each image's object (its mask at least ``threshold``) removed, as
    :func:`background_swap` lends it: filled by ROAD's linear imputation (``fill="impute"``) or
    set to ``baseline``; the other pixels are ``x``'s. They depend on the images and masks only,
    so they can be made once and passed as ``background_swap(..., backgrounds=)`` for every
    model scored on the same images.

    Shape:
        x: ``B C H W``; mask: ``B 1 h w`` or ``B h w``; returns ``B C H W``.
    """
    fn = f"{FN}.remove_objects"
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point() or x.shape[0] == 0:
        got = f"shape {tuple(x.shape)}, {x.dtype}" if isinstance(x, Tensor) else describe(x)
        raise fail(fn, "x", "a non-empty floating B C H W batch of images", got,
                   "Pass the images as the model takes them (x.float() for uint8 images)")
    x = check_finite(x, fn, "x")
    fg_pixels, _ = _foreground(x, mask, fill, baseline, threshold, fn)
    with torch.no_grad():
        return _backgrounds(x, fg_pixels, fill, float(baseline))


def _foreground(x: Tensor, mask: Tensor, fill: str, baseline: float, threshold: float,
                fn: str) -> tuple[Tensor, Tensor]:
    """The checked settings' foreground pixels (``B 1 H W`` bool, decided in float32) and the mask
    at the images' size, device and dtype."""
    check_choice(fill, FILLS, fn, "fill")
    check_positive(threshold, fn, "threshold", allow_zero=False)
    if threshold > 1:
        raise fail(fn, "threshold", "a foreground level in (0, 1]", repr(threshold), "Pass e.g. threshold=0.5")
    if isinstance(baseline, bool) or not isinstance(baseline, numbers.Real) or not math.isfinite(baseline):
        raise fail(fn, "baseline", "a finite number (the blank pixel value)", describe(baseline),
                   "Pass e.g. baseline=0.0")
    m = as_mask(mask, fn, "mask")
    check_same_batch(fn, x=x, mask=m)
    m = check_finite(m, fn, "mask")
    if tuple(m.shape[-2:]) != tuple(x.shape[-2:]):
        check_aspect(tuple(m.shape[-2:]), tuple(x.shape[-2:]), fn, "mask", "the images")
        m = resize_mask(m, tuple(x.shape[-2:]))
    fg_pixels = upload(m.float(), x.device) >= threshold  # (in float32: bf16 rounds 0.499 to 0.5)
    m = upload(m, x.device, x.dtype)
    return fg_pixels, m


def _donors(labels: Tensor, donor_ok: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """For each image: a donor of its class (another image) and one of another class, uniformly
    among the images with background to lend; -1 where there is none."""
    n = labels.shape[0]
    same_class = labels[:, None] == labels[None, :]
    allowed = donor_ok[None, :].expand(n, n)
    out = []
    for cand in ((same_class & ~torch.eye(n, dtype=torch.bool)) & allowed, ~same_class & allowed):
        any_ = cand.any(1)
        weights = torch.where(any_[:, None], cand.double(), 1.0)  # (rows without a candidate: drawn, then dropped)
        draw = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        out.append(torch.where(any_, draw, -1))
    return out[0], out[1]


def _backgrounds(x: Tensor, fg_pixels: Tensor, fill: str, baseline: float) -> Tensor:
    """Every image with its object (``fg_pixels``, ``B 1 H W`` bool) removed: imputed from the
    pixels around it, or set to ``baseline``."""
    keep = ~fg_pixels[:, 0]
    if fill == "baseline":
        return torch.where(keep[:, None], x, torch.full_like(x, baseline))
    from egl.metrics.imputation import noisy_linear_imputation

    return noisy_linear_imputation(x, keep, noise=0.0)
