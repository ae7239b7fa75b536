"""Checks and pixel ranking shared by the metric families (private)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import Tensor

from egl._check import (
    check_choice,
    check_finite,
    check_positive,
    check_same_batch,
    check_shape,
    describe,
    fail,
)
from egl._check import check_eval_mode, model_input_errors
from egl.explainers._targets import from_numpy
from egl._transfer import upload

__all__ = ["check_logits", "check_labels", "pixel_ranks", "num_top_pixels", "resize_map", "BASELINES",
           "check_perturbation", "replacement", "filler", "model_logits", "check_eval_mode"]

BASELINES = ("zero", "black", "blur", "mean", "linear", "noisy_linear")
#: Baselines that fill the removed pixels from the kept ones (ROAD's imputation): their values
#: depend on which pixels are removed, so they are computed per perturbed image.
IMPUTED = {"linear": 0.0, "noisy_linear": 0.01}


def check_logits(logits: object, fn: str, arg: str = "logits") -> Tensor:
    """``[B, C]`` finite floating scores with at least one sample and one class."""
    t = check_shape(logits, "B C", fn, arg)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise fail(fn, arg, "at least one sample and one class", describe(t),
                   f"Pass a non-empty [B, C] '{arg}'")
    return check_finite(t.detach(), fn, arg)


def check_labels(y: object, batch: Tensor, num_classes: int, fn: str, arg: str,
                 *, batch_arg: str = "logits") -> Tensor:
    """1-D integer labels, one per row of ``batch``, each in ``[0, num_classes)``: a tensor, a list or
    NumPy array of ints, or (``arg="target"``, one class for every image) an int."""
    y = from_numpy(y)
    if isinstance(y, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in y):
        y = torch.tensor(y, dtype=torch.long)
    elif arg == "target" and isinstance(y, int) and not isinstance(y, bool):
        y = torch.full((batch.shape[0],), y, dtype=torch.long)
    if not isinstance(y, Tensor):
        raise fail(fn, arg, "class indices: a LongTensor, a list or NumPy array of ints"
                   + (", or one int for every image" if arg == "target" else ""), describe(y),
                   "Pass class indices (plain Python or NumPy ints)")
    t = y
    if t.dim() != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise fail(fn, arg, "a 1-D integer tensor of class indices [B]", describe(t),
                   f"Pass class indices, e.g. {arg}.long() or {arg}.argmax(1) for one-hot labels")
    check_same_batch(fn, **{batch_arg: batch, arg: t})
    if t.numel():
        lo, hi = torch.stack([t.min(), t.max()]).tolist()  # one read of the device, not two
        if lo < 0 or hi >= num_classes:
            owner = f"'{batch_arg}' has {num_classes} classes" if batch_arg.startswith("logits") else \
                f"the model has {num_classes} outputs"  # (batch_arg the images: they have no classes)
            raise fail(fn, arg, f"class indices in [0, {num_classes - 1}]", f"values in [{lo}, {hi}]",
                       f"{owner}: relabel '{arg}' or fix the head")
    return upload(t, batch.device, torch.long)  # one_hot and gather take int64 indices


def pixel_ranks(scores: Tensor) -> Tensor:
    """Rank of every pixel within its row, 0 = most salient: ``[B, N]`` -> ``[B, N]`` int64.

    Ties are broken deterministically by raster order (the earlier pixel ranks first):
    a stable descending sort.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    arange = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    return ranks.scatter_(1, order, arange)


def num_top_pixels(k: float, num_pixels: int) -> int:
    """``round(k / 100 * num_pixels)`` rounding halves up: ``floor(k * N / 100 + 0.5)``."""
    return int(math.floor(k * num_pixels / 100.0 + 0.5))


def resize_map(s: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize a non-negative ``[B, 1, h, w]`` map: area averaging when shrinking in both
    dimensions, bilinear (``align_corners=False``) otherwise; no clamping."""
    if tuple(s.shape[-2:]) == tuple(size):
        return s
    if size[0] <= s.shape[-2] and size[1] <= s.shape[-1]:
        return F.adaptive_avg_pool2d(s, size)
    return F.interpolate(s, size=size, mode="bilinear", align_corners=False)


def check_perturbation(x: Tensor, baseline: object, batch_size: object, blur_sigma: object, fn: str,
                       arg: str = "baseline") -> None:
    """The arguments every perturbation metric shares: ``baseline`` one of :data:`BASELINES`,
    ``batch_size`` an int >= 1, and (``baseline="blur"`` only) ``0 < blur_sigma <=`` the image's
    larger side (the kernel, ``2 ceil(3 sigma) + 1`` wide, would grow without bound)."""
    check_choice(baseline, BASELINES, fn, arg)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise fail(fn, "batch_size", "an int >= 1", describe(batch_size), "Pass e.g. batch_size=256")
    if baseline == "blur":
        check_positive(blur_sigma, fn, "blur_sigma", allow_zero=False)
        if blur_sigma > max(x.shape[-2:]):  # type: ignore[operator]
            raise fail(fn, "blur_sigma", f"at most the image's larger side ({max(x.shape[-2:])} px)",
                       repr(blur_sigma), "A wider Gaussian is nearly constant over the image: use "
                       "baseline='mean', or a smaller blur_sigma")


def normalized_zero(x: Tensor, model: object) -> Tensor:
    """Zero in the model's normalised space, in ``x``'s space, ``[B, C or 1, 1, 1]``: the stem's
    mean colour when :func:`egl.normalization.normalize_inputs` put ``(x - mean) / std`` in the
    model (egl's images stay in [0, 1] then), else 0 (the images are normalised already, or not
    at all)."""
    from egl.normalization import stem_mean

    mean = stem_mean(model) if isinstance(model, torch.nn.Module) else None
    if mean is None or mean.shape[1] != x.shape[1]:
        return x.new_zeros(x.shape[0], 1, 1, 1)
    return upload(mean, x.device, x.dtype).expand(x.shape[0], -1, 1, 1)


def replacement(x: Tensor, baseline: str, blur_sigma: float, model: object = None) -> Tensor:
    """Values that removed pixels take, broadcastable to ``x`` and indexable by sample:
    ``"zero"`` zero in the model's normalised space (:func:`normalized_zero`), ``"black"`` 0 in
    ``x``'s space (the same for a model that does not normalise in its stem), ``"mean"`` the
    per-image channel means, ``"blur"`` a Gaussian-blurred copy (``blur_sigma`` px, kernel
    ``2 ceil(3 sigma) + 1``, replicate border). Not for the imputed baselines (:func:`filler`
    serves every baseline)."""
    if baseline == "zero":
        return normalized_zero(x, model)
    if baseline == "black":  # 0 in x's space, whatever the model does with it
        return x.new_zeros(x.shape[0], 1, 1, 1)
    if baseline == "mean":
        return x.mean(dim=(2, 3), keepdim=True)
    radius = max(1, math.ceil(3.0 * blur_sigma))
    return gaussian_blur2d(x, (2 * radius + 1, 2 * radius + 1), (blur_sigma, blur_sigma),
                           border_type="replicate")


def filler(x: Tensor, baseline: str, blur_sigma: float, model: object = None) -> Callable[[Tensor, Tensor], Tensor]:
    """``fill(i, keep)``: the images ``x[i]`` with the pixels where ``keep`` (``[n, 1, H, W]``
    bool) is False removed, the way ``baseline`` says.

    The imputed baselines (``"linear"``, ``"noisy_linear"``: ROAD's, :mod:`egl.metrics.imputation`)
    solve each perturbed image's fill from its kept pixels; ``"noisy_linear"`` adds one noise
    field per image of ``x``, drawn once (generator seeded 0), so that image ``i`` carries the
    same noise at every removal level and the result does not depend on how the images are
    chunked into forward passes.
    """
    if baseline not in IMPUTED:
        base = replacement(x, baseline, blur_sigma, model)
        return lambda i, keep: torch.where(keep, x[i], base[i])
    from egl.metrics.imputation import _fill

    sigma = IMPUTED[baseline]
    field = None
    if sigma > 0:
        field = sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    return lambda i, keep: _fill(x[i], keep[:, 0], None if field is None else field[i.cpu()])


def model_logits(model: Callable[[Tensor], Tensor], inp: Tensor, fn: str) -> Tensor:
    """``model(inp)``, refused unless it is a ``[N, num_classes]`` tensor."""
    with model_input_errors(fn, "x", inp):  # (perturbed copies of x: the same channels)
        out = model(inp)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != inp.shape[0]:
        raise fail(fn, "model", f"a model returning logits of shape [{inp.shape[0]}, num_classes]",
                   f"an output {describe(out)}", "Wrap the model so that it returns a [N, C] tensor")
    return out
