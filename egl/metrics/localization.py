"""Localisation of saliency against ground-truth masks: energy pointing game, pointing game
and top-|mask| IoU.

- Pointing game: Zhang et al., "Top-down Neural Attention by Excitation Backprop",
  ECCV 2016 (without their 15-pixel tolerance: the hit must fall inside the mask).
- Energy pointing game: Wang et al., "Score-CAM", CVPR Workshops 2020, with the mask in
  place of the bounding box.
- Top-|mask| IoU: the ``|M|`` most salient pixels against the mask ``M``, so the score does
  not depend on a threshold for the saliency.

The same functions score a masker's output against the truth: pass the masker's
``[B, 1, H, W]`` output as ``saliency``.

Conventions shared by all three:

- The mask is binarised at 0.5 (``mask >= 0.5`` is foreground) for every score, so the
  scores and the area fraction describe one pixel set.
- Saliency must be finite and non-negative (a raw ReLU map is fine; scale does not
  matter). It is resized to the mask's resolution: area averaging when shrinking in both
  dimensions, bilinear (``align_corners=False``) otherwise.
- Ties in saliency are broken by raster order (the earlier pixel ranks higher), as in
  :func:`egl.metrics.faithfulness`; a constant map (all zero: a dead Grad-CAM) ranks nothing
  and is scored as uniform: energy = area, pointing = area, IoU = area / (2 - area).
- A sample whose binarised mask is empty has no localisation score: its per-sample values
  are NaN and it is left out of the means (``valid`` marks the others). With no valid
  sample at all the means are NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from egl._check import check_choice, check_finite, check_range, check_same_batch, check_shape
from egl._masks import as_mask, check_aspect
from egl._transfer import upload
from egl.metrics._common import pixel_ranks, resize_map

__all__ = [
    "localization",
    "LocalizationResult",
    "energy_pointing_game",
    "pointing_game",
    "top_k_iou",
]

SALIENCY_SHAPE = "B 1 h w"
REDUCTIONS = ("mean", "none")


@dataclass(frozen=True)
class LocalizationResult:
    """Per-sample localisation scores, ``[B]`` each; NaN where ``valid`` is False.

    Attributes:
        energy: share of the saliency mass inside the mask, in [0, 1].
        area: share of the image the mask covers (0 for empty masks, never NaN): the energy
            of a uniform map, the chance level to read ``energy`` against.
        pointing: 1.0 where the most salient pixel lies inside the mask, else 0.0.
        iou: IoU of the ``|M|`` most salient pixels with the mask ``M``.
        valid: the binarised mask is non-empty.
    """

    energy: Tensor
    area: Tensor
    pointing: Tensor
    iou: Tensor
    valid: Tensor

    def means(self) -> dict[str, float]:
        """Means over valid samples: ``{"energy", "area", "pointing", "iou"}`` (NaN if none)."""
        return {name: float(_mean(getattr(self, name), self.valid))
                for name in ("energy", "area", "pointing", "iou")}


def _mean(values: Tensor, valid: Tensor) -> Tensor:
    if not bool(valid.any()):
        return torch.full((), float("nan"), dtype=values.dtype, device=values.device)
    return values[valid].mean()


def _prepare(saliency: Tensor, mask: Tensor, fn: str) -> tuple[Tensor, Tensor]:
    """Flattened ``[B, N]`` saliency at the mask's resolution and the bool mask."""
    s = check_shape(saliency, SALIENCY_SHAPE, fn, "saliency")
    check_finite(s.detach(), fn, "saliency")
    check_range(s.detach(), 0.0, float("inf"), fn, "saliency",
                "Saliency is a non-negative mass: apply ReLU or min-max normalise it")
    m = as_mask(mask, fn, "mask")
    check_same_batch(fn, saliency=s, mask=m)
    m = upload(m, s.device) >= 0.5
    check_aspect(tuple(s.shape[-2:]), tuple(m.shape[-2:]), fn, "saliency", "the mask")
    s = resize_map(s.detach(), tuple(m.shape[-2:]))
    s = s.to(dtype=torch.promote_types(s.dtype, torch.float32))  # 16-bit: counts > 2048 round, 2n - inter overflows
    return s.flatten(1), m.flatten(1)


def _scores(s: Tensor, m: Tensor) -> LocalizationResult:
    nan = torch.full((), float("nan"), dtype=s.dtype, device=s.device)
    valid = m.any(dim=1)
    mf = m.to(s.dtype)
    area = mf.mean(dim=1)
    mass = s.sum(dim=1)
    # A map with no mass carries no ranking: score it as uniform (energy = area).
    energy = torch.where(mass > 0, (s * mf).sum(dim=1) / torch.where(mass > 0, mass, 1.0), area)
    ranks = pixel_ranks(s)
    pointing = (m & (ranks == 0)).any(dim=1).to(s.dtype)
    n = m.sum(dim=1, keepdim=True)
    inter = (m & (ranks < n)).sum(dim=1).to(s.dtype)
    iou = inter / (2 * n.squeeze(1).to(s.dtype) - inter).clamp_min(1)
    # A constant map (all zero: a dead Grad-CAM) ranks nothing: raster order would score it by
    # where the object sits. Score it as uniform, as energy does: pointing hits with chance
    # ``area``, and |M| pixels drawn uniformly meet M in ``|M|·area`` on average: IoU a/(2 - a).
    flat = s.amax(dim=1) == s.amin(dim=1)
    pointing = torch.where(flat, area, pointing)
    iou = torch.where(flat, area / (2.0 - area), iou)
    return LocalizationResult(
        energy=torch.where(valid, energy, nan),
        area=area,
        pointing=torch.where(valid, pointing, nan),
        iou=torch.where(valid, iou, nan),
        valid=valid,
    )


def localization(saliency: Tensor, mask: Tensor) -> LocalizationResult:
    """Energy pointing game, area fraction, pointing game and top-|mask| IoU in one pass.

    Args:
        saliency: non-negative maps (explainer or masker output), any resolution.
        mask: ground truth in [0, 1], bool or float, binarised at 0.5.

    Returns:
        A :class:`LocalizationResult` of per-sample ``[B]`` tensors; ``.means()`` averages
        over samples with a non-empty mask.

    Raises:
        InputError: bad shapes, batch mismatch, negative or non-finite saliency, mask values
            outside [0, 1].

    Shape:
        saliency: ``B 1 h w``; mask: ``B 1 H W`` or ``B H W``.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :2] = 1
        >>> r = localization(m, m)
        >>> r.means()
        {'energy': 1.0, 'area': 0.25, 'pointing': 1.0, 'iou': 1.0}
    """
    s, m = _prepare(saliency, mask, "egl.metrics.localization")
    return _scores(s, m)


def energy_pointing_game(saliency: Tensor, mask: Tensor, *, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    """Share of saliency mass inside the mask, beside the mask's own area fraction.

    ``energy = sum(s * M) / sum(s)``; a uniform map scores ``area = mean(M)``, so energy
    only means something next to area. A map with zero mass is scored as uniform.

    Args:
        saliency: non-negative maps, any resolution.
        mask: ground truth in [0, 1], binarised at 0.5.
        reduction: ``"mean"`` (over samples with a non-empty mask) or ``"none"`` (``[B]``,
            energy NaN where the mask is empty).

    Returns:
        ``(energy, area)``.

    Raises:
        InputError: see :func:`localization`; also an unknown ``reduction``.

    Shape:
        saliency: ``B 1 h w``; mask: ``B 1 H W`` or ``B H W``.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :] = 1
        >>> [float(v) for v in energy_pointing_game(torch.ones(1, 1, 4, 4), m)]
        [0.5, 0.5]
    """
    fn = "egl.metrics.energy_pointing_game"
    check_choice(reduction, REDUCTIONS, fn, "reduction")
    r = _scores(*_prepare(saliency, mask, fn))
    if reduction == "none":
        return r.energy, r.area
    return _mean(r.energy, r.valid), _mean(r.area, r.valid)


def pointing_game(saliency: Tensor, mask: Tensor, *, reduction: str = "mean") -> Tensor:
    """Whether the most salient pixel (first in raster order on ties) lies inside the mask
    (a constant map scores ``area``, the chance of a uniform pick).

    Args:
        saliency: non-negative maps, any resolution.
        mask: ground truth in [0, 1], binarised at 0.5.
        reduction: ``"mean"`` (hit rate over samples with a non-empty mask) or ``"none"``
            (``[B]`` of 1.0 / 0.0, NaN where the mask is empty).

    Returns:
        The hit rate (0-D) or per-sample hits.

    Raises:
        InputError: see :func:`localization`; also an unknown ``reduction``.

    Shape:
        saliency: ``B 1 h w``; mask: ``B 1 H W`` or ``B H W``.

    Example:
        >>> import torch
        >>> s = torch.zeros(1, 1, 4, 4); s[0, 0, 3, 3] = 1
        >>> m = torch.zeros(1, 4, 4); m[0, 2:, 2:] = 1
        >>> float(pointing_game(s, m))
        1.0
    """
    fn = "egl.metrics.pointing_game"
    check_choice(reduction, REDUCTIONS, fn, "reduction")
    r = _scores(*_prepare(saliency, mask, fn))
    return r.pointing if reduction == "none" else _mean(r.pointing, r.valid)


def top_k_iou(saliency: Tensor, mask: Tensor, *, reduction: str = "mean") -> Tensor:
    """IoU of the ``|M|`` most salient pixels with the binarised mask ``M``.

    Taking as many pixels as the mask holds makes the score free of a saliency threshold:
    it is 1 exactly when the mask's pixels are the most salient ones.

    Args:
        saliency: non-negative maps, any resolution.
        mask: ground truth in [0, 1], binarised at 0.5.
        reduction: ``"mean"`` (over samples with a non-empty mask) or ``"none"`` (``[B]``,
            NaN where the mask is empty).

    Returns:
        The mean IoU (0-D) or per-sample IoUs.

    Raises:
        InputError: see :func:`localization`; also an unknown ``reduction``.

    Shape:
        saliency: ``B 1 h w``; mask: ``B 1 H W`` or ``B H W``.

    Example:
        >>> import torch
        >>> m = torch.zeros(1, 1, 4, 4); m[..., :2, :2] = 1
        >>> float(top_k_iou(m * 0.7, m))
        1.0
    """
    fn = "egl.metrics.top_k_iou"
    check_choice(reduction, REDUCTIONS, fn, "reduction")
    r = _scores(*_prepare(saliency, mask, fn))
    return r.iou if reduction == "none" else _mean(r.iou, r.valid)
