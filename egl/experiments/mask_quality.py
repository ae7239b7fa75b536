"""Mask quality (the paper's Figure 2): blur the image outside each masker's mask and see how a
classifier's accuracy changes. A mask that keeps what the classifier needs leaves accuracy
intact; one that blurs it away costs accuracy.

``x_blur = M ⊙ x + (1 − M) ⊙ GaussianBlur(x)`` (kornia, σ = 4 px by default).
"""

from __future__ import annotations

import math

import kornia
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from egl._transfer import upload
from egl.maskers.base import Masker
from egl.metrics import accuracy
from egl.recipes.batch import as_batch

__all__ = ["mask_quality", "blur_outside"]


def blur_outside(x: torch.Tensor, mask: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Keep ``x`` where ``mask`` is 1, a Gaussian-blurred ``x`` where it is 0 (soft in between)."""
    k = 2 * math.ceil(3 * sigma) + 1
    blurred = kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="replicate")
    return mask * x + (1 - mask) * blurred


def mask_quality(model: nn.Module, dataset: Dataset, maskers: dict[str, Masker], *, sigma: float = 4.0,
                 batch_size: int = 256, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Accuracy of ``model`` on ``dataset`` as is and with each masker's background blurred.

    Images flagged ``annotated=False`` (placeholder masks: :class:`egl.data.PartialMasks`,
    ``missing_masks="unannotated"``) are left out for every masker, so that the rows compare the
    same images.

    Returns:
        ``{"none": {"acc": a, "images": n}, name: {"acc": a_blur, "delta": a_blur - a, "mask_area": mean mask}}``.
    """
    was = {m: m.training for m in [model, *maskers.values()]}
    for m in was:
        m.eval()
    logits: dict[str, list[torch.Tensor]] = {"none": [], **{n: [] for n in maskers}}
    area: dict[str, list[torch.Tensor]] = {n: [] for n in maskers}
    labels = []
    try:
        with torch.no_grad():
            for raw in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                b = as_batch(raw)
                x, y, mask = b.x, b.y, b.mask
                if b.annotated is not None:  # placeholders are no masks: the annotated images only
                    keep = b.annotated.cpu()
                    if not bool(keep.any()):
                        continue
                    x, y, mask = x[keep], y[keep], None if mask is None else mask[keep]
                x = upload(x, device)
                labels.append(y)
                logits["none"].append(model(x).cpu())
                for name, masker in maskers.items():
                    m = masker(x, None if mask is None else upload(mask, device))
                    area[name].append(m.mean(dim=(1, 2, 3)).cpu())
                    logits[name].append(model(blur_outside(x, m, sigma)).cpu())
    finally:
        for m, mode in was.items():
            m.train(mode)
    if not labels:
        return {"none": {"acc": math.nan, "images": 0.0},
                **{n: {"acc": math.nan, "delta": math.nan, "mask_area": math.nan} for n in maskers}}
    y = torch.cat(labels)
    base = float(accuracy(torch.cat(logits["none"]), y))
    out = {"none": {"acc": base, "images": float(len(y))}}
    for name in maskers:
        acc = float(accuracy(torch.cat(logits[name]), y))
        out[name] = {"acc": acc, "delta": acc - base, "mask_area": float(torch.cat(area[name]).mean())}
    return out
