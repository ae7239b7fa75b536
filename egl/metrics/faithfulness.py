"""ERASER faithfulness of saliency maps: sufficiency and comprehensiveness (AOPC).

DeYoung et al., "ERASER: A Benchmark to Evaluate Rationalized NLP Models", ACL 2020,
adapted to images: the rationale of an image is its top-k% pixels by saliency.

For the predicted class ``ŷ`` (or a given ``target``) and ``p = softmax(model(.))``:

- comprehensiveness@k = ``p(ŷ|x) - p(ŷ|x with its top-k% pixels removed)``, higher is better;
- sufficiency@k = ``p(ŷ|x) - p(ŷ|only its top-k% pixels kept)``, lower is better (can be < 0).

Both are averaged over ``k`` (AOPC) per image, then over images. "Removed" pixels take a
baseline value: ``"zero"`` ("zero in normalised space", the default: the stem's mean colour
for a model that normalises its input itself, :func:`egl.normalization.normalize_inputs`; else
0 in the model's input space, the dataset mean colour for images normalised before the model),
``"blur"`` (the
same pixel of a Gaussian-blurred copy of the image), ``"mean"`` (the image's per-channel
mean), or ROAD's imputation (Rong et al., ICML 2022; :mod:`egl.metrics.imputation`):
``"noisy_linear"`` fills the removed pixels from the kept ones around them, plus noise of
standard deviation 0.01, and ``"linear"`` without the noise. A zeroed or blurred region's
shape can tell the model the class by itself; the imputation hides where pixels were removed.
With ``baseline="noisy_linear"``, comprehensiveness@k is ROAD's MoRF probability drop at k %
removed and sufficiency@k its LeRF drop at (100 − k) % removed.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from egl._check import check_finite, check_same_batch, check_shape, describe, fail
from egl._transfer import host_tensor, upload
from egl.metrics._common import (
    BASELINES,
    check_eval_mode,
    check_labels,
    check_perturbation,
    filler,
    model_logits,
    num_top_pixels,
    pixel_ranks,
)

__all__ = ["faithfulness", "FaithfulnessResult", "BASELINES", "DEFAULT_KS"]

DEFAULT_KS: tuple[float, ...] = (1, 5, 10, 20, 50)
X_SHAPE = "B C H W"
SALIENCY_SHAPE = "B 1 h w"


@dataclass(frozen=True)
class FaithfulnessResult:
    """What :func:`faithfulness` measured. Tensors live on the input's device.

    Attributes:
        sufficiency: 0-D, mean over images of each image's AOPC sufficiency (lower is better).
        comprehensiveness: 0-D, the same for comprehensiveness (higher is better).
        per_k: ``{k: {"sufficiency": 0-D, "comprehensiveness": 0-D}}``, means over images.
        sufficiency_per_image: ``[B, K]`` values per image and ``k`` (``.mean(1)`` is the
            image's AOPC).
        comprehensiveness_per_image: ``[B, K]``.
        target: ``[B]`` the class scored (the prediction unless ``target`` was given).
        prob: ``[B]`` ``p(target | x)`` on the unperturbed image.
        num_pixels: pixels in the rationale for each ``k``.
        ks: the percentages, in the order given.
    """

    sufficiency: Tensor
    comprehensiveness: Tensor
    per_k: dict[float, dict[str, Tensor]]
    sufficiency_per_image: Tensor
    comprehensiveness_per_image: Tensor
    target: Tensor
    prob: Tensor
    num_pixels: tuple[int, ...]
    ks: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        """Flat floats for logging: ``sufficiency``, ``comprehensiveness``, ``sufficiency@k``, ..."""
        out = {"sufficiency": float(self.sufficiency), "comprehensiveness": float(self.comprehensiveness)}
        for k, v in self.per_k.items():
            out[f"sufficiency@{k:g}"] = float(v["sufficiency"])
            out[f"comprehensiveness@{k:g}"] = float(v["comprehensiveness"])
        return out


def _check_ks(ks: object, fn: str) -> tuple[float, ...]:
    good = isinstance(ks, Sequence) and not isinstance(ks, str) and len(ks) > 0
    items = tuple(ks) if good else ()  # type: ignore[arg-type]
    good = good and all(
        isinstance(k, numbers.Real) and not isinstance(k, bool) and 0 < k <= 100 for k in items
    )
    if not good:
        shown = repr(items) if items else describe(ks)  # the values, so that the bad one can be seen
        raise fail(fn, "ks", "a non-empty sequence of percentages in (0, 100]", shown,
                   "Pass e.g. ks=(1, 5, 10, 20, 50)")
    if len(set(items)) != len(items):
        raise fail(fn, "ks", "distinct percentages", repr(items), "Remove the repeated values")
    if max(items) <= 1:  # (valid, but more likely fractions: 0.1 meant as 10%)
        warnings.warn(f"{fn}: every k in ks={items} is at most 1%: ks are percentages (ks=(10, 50) is 10% and "
                      "50% of the pixels), not fractions", stacklevel=3)
    return items  # type: ignore[return-value]


def faithfulness(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    saliency: Tensor,
    *,
    ks: Sequence[float] = DEFAULT_KS,
    baseline: str = "zero",
    target: Tensor | None = None,
    batch_size: int = 256,
    blur_sigma: float = 5.0,
) -> FaithfulnessResult:
    """ERASER sufficiency and comprehensiveness (AOPC over ``ks``) of saliency maps.

    The rationale of image ``i`` at ``k`` is its ``n_k = floor(k / 100 * H * W + 0.5)``
    (round half up) most salient pixels, all channels; ties in saliency are broken by
    raster order (the earlier pixel is taken first). At small sizes a small ``k`` can
    select no pixel (1% of 4x4), which gives comprehensiveness 0 at that ``k``. Saliency
    of another resolution is resized to ``H x W`` with bilinear interpolation
    (``align_corners=False``) before ranking.

    All ``(2 K + 1) B`` images (the originals, then for each ``k`` the comprehensiveness
    and sufficiency inputs) are built lazily and sent through the model in chunks of at
    most ``batch_size``: ``ceil((2 K + 1) B / batch_size)`` forward calls, no per-image
    loop. The model runs under ``torch.no_grad()`` and its mode is left alone: put it in
    eval mode first (batch-norm in train mode would mix images within a chunk).

    Args:
        model: maps ``[N, C, H, W]`` to logits ``[N, num_classes]``.
        x: images, in the space the model takes (normalised, usually).
        saliency: one map per image, any resolution; only the ranking of its values matters
            (ranked in at least float32, whatever ``x``'s dtype).
        ks: percentages in (0, 100], distinct.
        baseline: value of removed pixels: ``"zero"`` (zero in normalised space: the stem's mean
            colour for a model with :func:`egl.normalization.normalize_inputs`, else 0),
            ``"blur"`` (Gaussian blur of the image, ``blur_sigma`` pixels, kernel
            ``2 ceil(3 sigma) + 1``, replicate border), ``"mean"`` (per-image channel mean),
            ``"noisy_linear"`` (ROAD's imputation from the kept pixels, noise 0.01; one sparse
            solve per perturbed image on the CPU: far slower than the others) or ``"linear"``
            (the same without noise). The noise is one field per image (generator seeded 0),
            the same at every ``k``: ROAD's code draws it afresh for every perturbed image; here
            results repeat and do not depend on ``batch_size``.
        target: classes to score instead of the prediction ``argmax model(x)``.
        batch_size: most images per forward call.
        blur_sigma: standard deviation of the blur in pixels (``baseline="blur"`` only; at most
            the image's larger side).

    Returns:
        A :class:`FaithfulnessResult`.

    Raises:
        InputError: bad shapes, batch mismatch, non-finite inputs, ``ks`` outside (0, 100],
            unknown ``baseline``, ``batch_size`` < 1, ``blur_sigma`` above the image's larger side,
            or a model that does not return logits.

    Shape:
        x: ``B C H W``; saliency: ``B 1 h w``; target: ``B``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
        >>> x, s = torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
        >>> r = faithfulness(model, x, s, ks=(10, 50))
        >>> r.sufficiency_per_image.shape, r.num_pixels
        (torch.Size([2, 2]), (6, 32))
    """
    fn = "egl.metrics.faithfulness"
    check_eval_mode(model, fn)
    x = check_shape(x, X_SHAPE, fn, "x")
    s = check_shape(saliency, SALIENCY_SHAPE, fn, "saliency")
    check_same_batch(fn, x=x, saliency=s)
    if x.shape[0] == 0:
        raise fail(fn, "x", "at least one image", describe(x), "Pass a non-empty batch")
    check_finite(x.detach(), fn, "x")
    check_finite(s.detach(), fn, "saliency")
    ks = _check_ks(ks, fn)
    check_perturbation(x, baseline, batch_size, blur_sigma, fn)

    b, _, h, w = x.shape
    with torch.no_grad():
        x = x.detach()
        s = upload(s.detach(), x.device, torch.promote_types(s.dtype, torch.float32))  # ranked at >= 32 bits
        if tuple(s.shape[-2:]) != (h, w):
            s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
        ranks = pixel_ranks(s.flatten(1)).int()  # [B, H*W], 0 = most salient
        fill = filler(x, baseline, blur_sigma, model)
        counts = tuple(num_top_pixels(k, h * w) for k in ks)
        # Variant 0 is the original image (nothing removed), then comprehensiveness
        # (top n removed) and sufficiency (only top n kept) for every k.
        n_of = host_tensor((0,) + counts + counts, x.device, torch.int32)
        keep_top = host_tensor((False,) * (1 + len(ks)) + (True,) * len(ks), x.device, torch.bool)
        total = n_of.numel() * b
        logits = []
        for start in range(0, total, batch_size):
            idx = torch.arange(start, min(start + batch_size, total), device=x.device)
            v, i = idx // b, idx % b
            in_top = ranks[i] < n_of[v, None]
            keep = (in_top == keep_top[v, None]).view(-1, 1, h, w)
            logits.append(model_logits(model, fill(i, keep), fn))
        out = torch.cat(logits)
        out = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
        probs = torch.softmax(out, dim=1).view(n_of.numel(), b, -1)
        if target is None:
            tgt = probs[0].argmax(dim=1)
        else:
            tgt = check_labels(target, x, probs.shape[-1], fn, "target", batch_arg="x").long()
        p = probs.gather(2, tgt.view(1, b, 1).expand(n_of.numel(), b, 1)).squeeze(2)  # [V, B]
        nk = len(ks)
        comp = (p[0] - p[1:1 + nk]).T.contiguous()  # [B, K]
        suff = (p[0] - p[1 + nk:]).T.contiguous()
    per_k = {
        k: {"sufficiency": suff[:, j].mean(), "comprehensiveness": comp[:, j].mean()}
        for j, k in enumerate(ks)
    }
    return FaithfulnessResult(
        sufficiency=suff.mean(dim=1).mean(),
        comprehensiveness=comp.mean(dim=1).mean(),
        per_k=per_k,
        sufficiency_per_image=suff,
        comprehensiveness_per_image=comp,
        target=tgt,
        prob=p[0],
        num_pixels=counts,
        ks=ks,
    )
