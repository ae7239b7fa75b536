"""ALIGN's masker objective (Hong et al., AAAI 2026, Eq. 13):
``dist = f_y(x ⊙ M) − f_y(x ⊙ (1 − M))``, loss ``MSE(dist, 1)``, with ``f_y`` the softmax
probability of the true class. A good mask keeps everything the classifier needs
(foreground alone: confident) and nothing of it outside (background alone: not).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egl._check import (check_choice, check_eval_mode, check_logits, check_model_dtype, check_same_batch, check_shape,
                        describe, fail, model_input_errors)
from egl._masks import as_mask, check_aspect, resize_mask
from egl._transfer import upload
from egl.explainers.base import targets
from egl.losses._reduction import REDUCTIONS, reduce
from egl.normalization import stem_mean

__all__ = ["masker_dist", "masker_dist_loss", "masked_pair_logits", "MaskerDistLoss"]


def masker_dist(logits_fg: Tensor, logits_bg: Tensor, target: Tensor) -> Tensor:
    """``p_y(foreground) − p_y(background)`` per sample, in [-1, 1], computed in float32 at least.

    Shape:
        logits_fg, logits_bg: ``B K``; target: ``B``; returns ``B``.
    """
    fn = "egl.losses.masker_dist"
    check_shape(logits_fg, "B K", fn, "logits_fg")
    check_shape(logits_bg, "B K", fn, "logits_bg")
    check_same_batch(fn, logits_fg=logits_fg, logits_bg=logits_bg)
    if logits_fg.shape[1] != logits_bg.shape[1]:
        raise fail(fn, "logits_bg", f"the class count of 'logits_fg' ({logits_fg.shape[1]})",
                   f"{logits_bg.shape[1]} classes", "Pass the same model's logits for both images")
    spec = targets(target, logits_fg.shape[0], fn, logits_fg.device)
    if spec is None:
        raise fail(fn, "target", "the true class of every sample", "None", "Pass the labels y")
    t = spec.index(logits_fg.shape[1], fn)  # a host spec is checked on the host
    dt = torch.promote_types(logits_fg.dtype, torch.float32)  # bf16 logits: dist off by ~0.4%, its gradient ~10%
    p_fg = logits_fg.to(dtype=dt).softmax(dim=1).gather(1, t[:, None]).squeeze(1)
    p_bg = logits_bg.to(dtype=dt).softmax(dim=1).gather(1, t[:, None]).squeeze(1)
    return p_fg - p_bg


def masker_dist_loss(logits_fg: Tensor, logits_bg: Tensor, target: Tensor, *, reduction: str = "mean") -> Tensor:
    """``MSE(dist, 1)`` with ``dist`` from :func:`masker_dist`."""
    return reduce((masker_dist(logits_fg, logits_bg, target) - 1.0) ** 2, reduction, "egl.losses.masker_dist_loss")


FILLS = ("normalized", "black")


def masked_pair_logits(model: nn.Module, x: Tensor, mask: Tensor, *, fill: str = "normalized",
                       fn: str = "egl.losses.masked_pair_logits") -> tuple[Tensor, Tensor]:
    """Logits of ``x ⊙ M`` and ``x ⊙ (1 − M)`` from one forward pass over both halves.

    The product is taken in the model's normalised space, as the paper's code multiplies its
    normalised tensors: for a model whose stem normalises egl's [0, 1] images
    (:func:`egl.normalization.normalize_inputs`, mean colour ``μ``) the halves are
    ``μ + (x − μ) ⊙ M`` and ``μ + (x − μ) ⊙ (1 − M)``, so removed pixels become the mean colour
    (zero after the stem), not black; for any other model, ``x ⊙ M`` and ``x ⊙ (1 − M)``.
    ``fill="black"`` takes ``x ⊙ M`` as it is for every model (egl's masker objective before
    2026-11-29; ``fn`` names the caller in errors).

    Shape:
        x: ``B C H W``; mask: ``B 1 H W`` at x's resolution; returns two ``B K``.

    Raises:
        InputError: ``model`` not callable, ``x`` or ``mask`` of the wrong shape (a mask of another
            batch size or resolution would broadcast), or ``x`` not of the model's dtype.
        UnsupportedModelError: the model does not return ``[2B, K]`` logits.
    """
    check_choice(fill, FILLS, fn, "fill")
    x = check_shape(x, "B C H W", fn, "x")
    _check_model(model, x, fn)
    mask = check_shape(mask, "B 1 H W", fn, "mask", floating=False)
    if not mask.is_floating_point():  # (x * a uint8 0-255 mask would weigh pixels by 255)
        raise fail(fn, "mask", "floating-point masks in [0, 1]", describe(mask),
                   "Convert them: mask.float() for 0/1 or bool masks, mask.float() / 255 for 0-255 masks")
    check_same_batch(fn, x=x, mask=mask)
    if mask.shape[-2:] != x.shape[-2:]:
        raise fail(fn, "mask", f"masks at the resolution of 'x' {list(x.shape[-2:])}", describe(mask),
                   "Resize them, e.g. torch.nn.functional.interpolate(mask, size=x.shape[-2:], mode='bilinear') "
                   "(a masker should return masks at its input's size)")
    b = x.shape[0]
    check_eval_mode(model, fn, batchnorm_only=True,
                    why="BatchNorm in training mode would normalise the two masked halves together and move its "
                        "running statistics towards masked images",
                    fix="Call model.eval() for the masker step and model.train() after it, as ALIGN's masker "
                        "phase does")
    mean = stem_mean(model) if isinstance(model, nn.Module) and fill == "normalized" else None
    if mean is None:
        pair = torch.cat([x * mask, x * (1.0 - mask)], dim=0)
    else:  # zero in the normalised space: (x - mean) * M, before the stem's division by std
        mean = upload(mean, x.device, x.dtype)  # (the model's buffer: on x's device already)
        d = x - mean
        pair = torch.cat([mean + d * mask, mean + d * (1.0 - mask)], dim=0)
    with model_input_errors(fn, "x", x, pair):
        out = model(pair)
    logits = check_logits(out, 2 * b, fn)
    return logits[:b], logits[b:]  # (split() of an empty batch gives one piece, not two)


def _check_model(model: object, x: Tensor, fn: str) -> None:
    """A callable classifier; an ``nn.Module`` is given images of its parameters' dtype (float64
    images into a float32 model crash deep inside its first layer)."""
    if not callable(model):
        raise fail(fn, "model", "a classifier (a torch.nn.Module returning [B, K] logits)", describe(model),
                   "Pass the model itself")
    if isinstance(model, nn.Module):
        check_model_dtype(model, x, fn, "x")


class MaskerDistLoss(nn.Module):
    """Runs the classifier on ``x ⊙ M`` and ``x ⊙ (1 − M)`` as one batch and scores the mask.

    The two halves go through the model in a single call (half the kernel launches).
    With BatchNorm in training mode that would mix the halves' statistics, so ALIGN's
    masker phase runs the frozen classifier in eval mode (see the recipe).

    Args:
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        fill: what the removed pixels become: ``"normalized"`` (default: zero in the model's
            normalised space) or ``"black"`` (:func:`masked_pair_logits`).
    """

    def __init__(self, reduction: str = "mean", fill: str = "normalized") -> None:
        super().__init__()
        check_choice(reduction, REDUCTIONS, "egl.losses.MaskerDistLoss", "reduction")
        check_choice(fill, FILLS, "egl.losses.MaskerDistLoss", "fill")
        self.reduction, self.fill = reduction, fill

    def forward(self, model: nn.Module, x: Tensor, mask: Tensor, target: Tensor) -> Tensor:
        fn = "egl.losses.MaskerDistLoss"
        x = check_shape(x, "B C H W", fn, "x")
        _check_model(model, x, fn)
        m = as_mask(mask, fn, "mask")
        check_aspect(tuple(m.shape[-2:]), tuple(x.shape[-2:]), fn, "mask", "the images")
        m = resize_mask(upload(m, x.device, x.dtype), tuple(x.shape[-2:]))
        check_same_batch(fn, x=x, mask=m)
        fg, bg = masked_pair_logits(model, x, m, fill=self.fill, fn=fn)
        return masker_dist_loss(fg, bg, target, reduction=self.reduction)
