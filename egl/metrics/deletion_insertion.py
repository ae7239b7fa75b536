"""RISE deletion and insertion curves of saliency maps, batched.

Petsiuk et al., "RISE: Randomized Input Sampling for Explanation of Black-box Models", BMVC 2018.
Pixels are moved in the order of their saliency (most salient first) and the model's probability
of the class is read after every step; the score is the area under that curve over the fraction
of pixels moved (trapezoid rule, x from 0 to 1):

- **deletion**: start from the image, replace pixels by a baseline (default ``"zero"``, as RISE);
  the probability should fall fast: *lower* area is better.
- **insertion**: start from the baseline (default ``"blur"``, as RISE), put the image's pixels
  back; the probability should rise fast: *higher* area is better.

The class is the prediction on the unperturbed image (as RISE), or ``target=``. Where RISE moves a
fixed number of pixels per step, ``steps`` here splits the ``H W`` pixels into that many equal
steps (``n_i = floor(i H W / steps + 0.5)`` pixels moved after step ``i``): ``steps=H`` on a
square image is RISE's step of one row's worth of pixels (224 steps at 224 px).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from egl._check import check_finite, check_same_batch, check_shape, describe, fail
from egl._transfer import host_tensor, upload
from egl.metrics._common import check_eval_mode, check_labels, check_perturbation, filler, model_logits, pixel_ranks

__all__ = ["deletion", "insertion", "CurveResult", "DEFAULT_STEPS"]

DEFAULT_STEPS = 100
X_SHAPE = "B C H W"
SALIENCY_SHAPE = "B 1 h w"


@dataclass(frozen=True)
class CurveResult:
    """What :func:`deletion` or :func:`insertion` measured. Tensors live on the input's device.

    Attributes:
        auc: 0-D, the mean over images of each image's area under its curve.
        auc_per_image: ``[B]``.
        curve: ``[B, steps + 1]`` ``p(target | image after i steps)``; column 0 is the start (the
            image for deletion, the baseline for insertion), the last the end.
        fractions: ``[steps + 1]`` the share of pixels moved at each point, 0 to 1.
        target: ``[B]`` the class scored (the prediction on the image unless ``target`` was given).
        prob: ``[B]`` ``p(target | x)`` on the unperturbed image.
    """

    auc: Tensor
    auc_per_image: Tensor
    curve: Tensor
    fractions: Tensor
    target: Tensor
    prob: Tensor


def _check_steps(steps: object, num_pixels: int, fn: str) -> int:
    if steps is None:
        return min(DEFAULT_STEPS, num_pixels)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_pixels:
        raise fail(fn, "steps", f"an int in [1, H*W = {num_pixels}]", describe(steps),
                   f"Pass e.g. steps={min(100, num_pixels)} (more steps than pixels would repeat images)")
    return steps


def _curve(model: Callable[[Tensor], Tensor], x: Tensor, saliency: Tensor, *, insert: bool, steps: int | None,
           baseline: str, target: Tensor | None, batch_size: int, blur_sigma: float, fn: str) -> CurveResult:
    check_eval_mode(model, fn)
    x = check_shape(x, X_SHAPE, fn, "x")
    s = check_shape(saliency, SALIENCY_SHAPE, fn, "saliency")
    check_same_batch(fn, x=x, saliency=s)
    check_finite(x.detach(), fn, "x")
    check_finite(s.detach(), fn, "saliency")
    b, _, h, w = x.shape
    if b == 0:
        raise fail(fn, "x", "at least one image", describe(x), "Pass a non-empty batch")
    steps = _check_steps(steps, h * w, fn)
    check_perturbation(x, baseline, batch_size, blur_sigma, fn)
    if target is not None:  # its shape and type before (steps + 1) B forward passes; its range after the first
        check_labels(target, x, 2**62, fn, "target", batch_arg="x")
    with torch.no_grad():
        x = x.detach()
        s = upload(s.detach(), x.device, torch.promote_types(s.dtype, torch.float32))  # ranked at >= 32 bits
        if tuple(s.shape[-2:]) != (h, w):
            s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
        ranks = pixel_ranks(s.flatten(1)).int()  # [B, H*W], 0 = most salient
        fill = filler(x, baseline, blur_sigma, model)
        counts = [(2 * i * h * w + steps) // (2 * steps) for i in range(steps + 1)]  # floor(i H W / steps + 0.5)
        n_of = host_tensor(counts, x.device, torch.int32)
        total = (steps + 1) * b
        logits = []
        for first in range(0, total, batch_size):  # point-major: images of one point, then the next
            idx = torch.arange(first, min(first + batch_size, total), device=x.device)
            v, i = idx // b, idx % b
            moved = (ranks[i] < n_of[v, None]).view(-1, 1, h, w)
            logits.append(model_logits(model, fill(i, moved if insert else ~moved), fn))
        out = torch.cat(logits)
        out = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
        probs = torch.softmax(out, dim=1).view(steps + 1, b, -1)
        whole = probs[-1] if insert else probs[0]  # the unperturbed image: the end of insertion, the start of deletion
        if target is None:
            tgt = whole.argmax(dim=1)
        else:
            tgt = check_labels(target, x, probs.shape[-1], fn, "target", batch_arg="x")
        curve = probs.gather(2, tgt.view(1, b, 1).expand(steps + 1, b, 1)).squeeze(2).T.contiguous()  # [B, S+1]
        fractions = host_tensor(counts, x.device, curve.dtype) / (h * w)
        area = torch.trapezoid(curve, fractions, dim=1)
    return CurveResult(auc=area.mean(), auc_per_image=area, curve=curve, fractions=fractions, target=tgt,
                       prob=curve[:, -1] if insert else curve[:, 0])


def deletion(model: Callable[[Tensor], Tensor], x: Tensor, saliency: Tensor, *, steps: int | None = None,
             baseline: str = "zero", target: Tensor | None = None, batch_size: int = 256,
             blur_sigma: float = 5.0) -> CurveResult:
    """RISE deletion: area under ``p(class)`` as the most salient pixels are removed (lower is better).

    Pixels are ranked by saliency (ties broken by raster order, the earlier pixel first; saliency of
    another resolution resized to ``H x W`` bilinearly, ``align_corners=False``); after step ``i`` the
    top ``n_i = floor(i H W / steps + 0.5)`` pixels of every channel hold the baseline. All
    ``(steps + 1) B`` images are built lazily and sent through the model in chunks of at most
    ``batch_size``: ``ceil((steps + 1) B / batch_size)`` forward calls, no per-image loop. The model
    runs under ``torch.no_grad()`` and its mode is left alone: put it in eval mode first.

    Args:
        model: maps ``[N, C, H, W]`` to logits ``[N, num_classes]``.
        x: images, in the space the model takes (normalised, usually).
        saliency: one map per image, any resolution; only the ranking of its values matters.
        steps: points on the curve after the start, at most ``H W`` (default: 100, or ``H W``
            for smaller images; a choice: cost grows with it; ``steps=H`` is RISE's one row of
            pixels per step).
        baseline: what removed pixels become: ``"zero"`` (zero in normalised space: the stem's
            mean colour for a model with :func:`egl.normalization.normalize_inputs`, else 0;
            RISE's deletion), ``"blur"`` (a Gaussian blur of the image, ``blur_sigma``
            px, kernel ``2 ceil(3 sigma) + 1``; RISE used an 11-pixel kernel), ``"mean"``
            (the image's channel means), ``"noisy_linear"`` (ROAD's imputation from the pixels not
            yet removed, noise 0.01: ROAD's MoRF curve; one sparse solve per point and image on
            the CPU; one noise field per image, seeded 0, the same at every point, where ROAD
            draws it afresh) or ``"linear"`` (the same without noise).
        target: classes to score instead of the prediction ``argmax model(x)``.
        batch_size: most images per forward call.
        blur_sigma: the blur's standard deviation in pixels (``baseline="blur"`` only; at most the
            image's larger side).

    Returns:
        A :class:`CurveResult`.

    Raises:
        InputError: bad shapes, batch mismatch, non-finite inputs, ``steps`` outside
            ``[1, H W]``, unknown ``baseline``, ``batch_size`` < 1, ``blur_sigma`` out of range,
            or a model that does not return logits.

    Shape:
        x: ``B C H W``; saliency: ``B 1 h w``; target: ``B``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
        >>> x, s = torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
        >>> r = deletion(model, x, s, steps=16)
        >>> r.curve.shape, r.auc_per_image.shape, float(r.fractions[-1])
        (torch.Size([2, 17]), torch.Size([2]), 1.0)
    """
    return _curve(model, x, saliency, insert=False, steps=steps, baseline=baseline, target=target,
                  batch_size=batch_size, blur_sigma=blur_sigma, fn="egl.metrics.deletion")


def insertion(model: Callable[[Tensor], Tensor], x: Tensor, saliency: Tensor, *, steps: int | None = None,
              baseline: str = "blur", target: Tensor | None = None, batch_size: int = 256,
              blur_sigma: float = 5.0) -> CurveResult:
    """RISE insertion: area under ``p(class)`` as the most salient pixels are put back into a
    baseline image (higher is better).

    The same as :func:`deletion` run the other way: the curve starts at the baseline image
    (default ``"blur"``: RISE's insertion starts from a blurred copy) and after step ``i`` the top
    ``n_i`` pixels hold the image's values; the last point is the image itself.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
        >>> x, s = torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
        >>> r = insertion(model, x, s, steps=16)
        >>> bool(torch.equal(r.curve[:, -1], r.prob))
        True
    """
    return _curve(model, x, saliency, insert=True, steps=steps, baseline=baseline, target=target,
                  batch_size=batch_size, blur_sigma=blur_sigma, fn="egl.metrics.insertion")
