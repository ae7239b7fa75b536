"""ROAD: RemOve And Debias (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022), in its usual form: the class probability's drop when the
most relevant pixels are removed first (MoRF) and when the least relevant are (LeRF), at several
percentiles, the removed pixels filled by noisy linear imputation
(:mod:`egl.metrics.imputation`).

For ``p = softmax(model(·))`` and the predicted class ``ŷ`` (or ``target``), per image and
percentile ``q``:

- ``morf@q = p(ŷ|x) − p(ŷ|x with its top-q % pixels imputed)``: higher is better;
- ``lerf@q = p(ŷ|x) − p(ŷ|x with its bottom-q % pixels imputed)``: lower is better;
- ``combined = mean over q of (morf − lerf) / 2``: higher is better (pytorch-grad-cam's
  ``ROADCombined``, whose confidence changes are these drops negated).

It is :func:`egl.metrics.faithfulness` with ``baseline="noisy_linear"`` read the ROAD way:
MoRF at ``q`` is comprehensiveness at ``k = q`` and LeRF at ``q`` is sufficiency at
``k = 100 − q`` (the top ``100 − q`` % kept: the same pixel counts, the rounding of half a pixel
aside), all ``2 Q + 1`` variants batched through the model with no per-image loop.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from egl._check import describe, fail
from egl.metrics._common import check_eval_mode
from egl.metrics.faithfulness import faithfulness

__all__ = ["road", "RoadResult", "ROAD_PERCENTILES"]

#: ROAD's percentiles (pytorch-grad-cam's ``ROADCombined`` default).
ROAD_PERCENTILES: tuple[float, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)


@dataclass(frozen=True)
class RoadResult:
    """What :func:`road` measured. Tensors live on the input's device.

    Attributes:
        combined: 0-D, mean over images and percentiles of ``(morf − lerf) / 2`` (higher is better).
        morf: 0-D, mean MoRF drop (higher is better). lerf: 0-D, mean LeRF drop (lower is better).
        morf_per_image: ``[B, Q]`` drops per image and percentile. lerf_per_image: ``[B, Q]``.
        target: ``[B]`` the class scored. prob: ``[B]`` ``p(target | x)`` unperturbed.
        percentiles: the percentiles, in the order given.
    """

    combined: Tensor
    morf: Tensor
    lerf: Tensor
    morf_per_image: Tensor
    lerf_per_image: Tensor
    target: Tensor
    prob: Tensor
    percentiles: tuple[float, ...]

    def as_dict(self) -> dict[str, float]:
        """Flat floats for logging: ``road``, ``morf``, ``lerf``, ``morf@q``, ``lerf@q``."""
        out = {"road": float(self.combined), "morf": float(self.morf), "lerf": float(self.lerf)}
        for j, q in enumerate(self.percentiles):
            out[f"morf@{q:g}"] = float(self.morf_per_image[:, j].mean())
            out[f"lerf@{q:g}"] = float(self.lerf_per_image[:, j].mean())
        return out


def road(model: Callable[[Tensor], Tensor], x: Tensor, saliency: Tensor, *,
         percentiles: Sequence[float] = ROAD_PERCENTILES, baseline: str = "noisy_linear",
         target: Tensor | None = None, batch_size: int = 256) -> RoadResult:
    """ROAD's MoRF and LeRF probability drops, and their combination, for saliency maps.

    Args:
        model: maps ``[N, C, H, W]`` to logits (put it in eval mode first).
        x: images, in the space the model takes.
        saliency: one map per image, any resolution (only its ranking matters).
        percentiles: shares of the pixels removed, each in (0, 100), distinct (ROAD's 10..90).
        baseline: ``"noisy_linear"`` (ROAD's: imputation plus noise 0.01) or ``"linear"``
            (no noise).
        target: classes to score instead of the prediction.
        batch_size: most images per forward call.

    Shape:
        x: ``B C H W``; saliency: ``B 1 h w``; target: ``B``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
        >>> r = road(model, torch.randn(2, 3, 8, 8), torch.rand(2, 1, 8, 8), percentiles=(20, 50))
        >>> r.morf_per_image.shape, sorted(r.as_dict())[:3]
        (torch.Size([2, 2]), ['lerf', 'lerf@20', 'lerf@50'])
    """
    fn = "egl.metrics.road"
    check_eval_mode(model, fn)
    qs = _check_percentiles(percentiles, fn)
    if baseline not in ("noisy_linear", "linear"):
        raise fail(fn, "baseline", "'noisy_linear' (ROAD's) or 'linear'", repr(baseline),
                   "Pass baseline='noisy_linear'; other baselines: egl.metrics.faithfulness")
    ks = tuple(sorted({float(q) for q in qs} | {100.0 - q for q in qs}))
    r = faithfulness(model, x, saliency, ks=ks, baseline=baseline, target=target, batch_size=batch_size)
    at = {k: j for j, k in enumerate(r.ks)}
    morf = r.comprehensiveness_per_image[:, [at[float(q)] for q in qs]]
    lerf = r.sufficiency_per_image[:, [at[100.0 - q] for q in qs]]
    return RoadResult(combined=((morf - lerf) / 2).mean(), morf=morf.mean(), lerf=lerf.mean(),
                      morf_per_image=morf, lerf_per_image=lerf, target=r.target, prob=r.prob, percentiles=qs)


def _check_percentiles(percentiles: object, fn: str) -> tuple[float, ...]:
    ok = isinstance(percentiles, Sequence) and not isinstance(percentiles, str) and len(percentiles) > 0
    items = tuple(percentiles) if ok else ()  # type: ignore[arg-type]
    ok = ok and all(isinstance(q, numbers.Real) and not isinstance(q, bool) and 0 < q < 100 for q in items)
    if not ok:
        raise fail(fn, "percentiles", "a non-empty sequence of percentages in (0, 100)",
                   repr(items) if items else describe(percentiles), "Pass e.g. percentiles=(10, 20, ..., 90)")
    if len({float(q) for q in items}) != len(items):
        raise fail(fn, "percentiles", "distinct percentages", repr(items), "Remove the repeated values")
    return items


