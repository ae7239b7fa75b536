"""Keep the masks of a fraction of a data set's images: explanation supervision with few annotations.

Human masks are the costly part of explanation-guided learning; how much a method gains from
1 %, 10 % or all of them is a question of the field (RES, Gao et al., KDD 2022, trains with a
few hundred annotated images; ALIGN's learned masker is there to need none). ``PartialMasks``
wraps a data set whose items carry ``mask``: a seeded draw of ``round(fraction * n)`` of its ``n``
items that have a mask keeps its mask and is marked ``annotated=True``; every other item's mask
becomes zeros (so nothing of it leaks) and ``annotated=False``. ``n`` is the data set's length,
or, for a :class:`~egl.data.DomainFolder` or :class:`~egl.data.ImageCSV` (or a ``Subset`` of one)
read with ``missing_masks="unannotated"``, the number of its images that have a mask. Recipes
read the flag: ALIGN with a masker that reads the data's masks (``ground_truth``) takes its
alignment term from the annotated images of each batch only (summed and divided by the batch
size by default; :class:`egl.recipes.ALIGN`'s ``annotated_mean``).
Recipes, maskers and losses of your own that read ``batch.mask`` see the placeholders too: read
``batch.annotated`` to leave them out.

The draw depends on ``seed`` and the data set's length only, not on the training seed: runs of
several training seeds share one annotated subset (a choice; vary ``seed`` to vary the subset).
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch
from torch.utils.data import Dataset

from egl._check import describe, fail
from egl.data._wrapping import check_data_seed, map_style_length

__all__ = ["PartialMasks", "check_fraction"]

_FN = "egl.data.PartialMasks"


def check_fraction(fraction: object, fn: str, arg: str = "fraction") -> float:
    """A share in [0, 1] (a bool or NaN is refused)."""
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 <= fraction <= 1:
        raise fail(fn, arg, "a share of the images in [0, 1]", repr(fraction)[:100] if isinstance(
            fraction, (numbers.Real, str)) else describe(fraction), f"Pass e.g. {arg}=0.1 (10% of the masks kept)")
    return float(fraction)


class PartialMasks(Dataset):
    """``dataset`` with the masks of a seeded ``fraction`` of its items kept (see the module doc).

    Args:
        dataset: a map-style data set of dict items with ``mask``.
        fraction: the share of items whose masks are kept, in [0, 1]; ``round(fraction * n)``
            items (halves up; ``n`` as in the module doc), at least one when ``fraction > 0``.
        seed: the draw's seed.

    Attributes:
        annotated: the sorted indices of the items that keep their masks.

    Example:
        >>> import torch
        >>> data = [{"image": torch.rand(3, 4, 4), "label": torch.tensor(0), "mask": torch.ones(1, 4, 4)}
        ...         for _ in range(10)]
        >>> part = PartialMasks(data, 0.3)
        >>> len(part.annotated), sum(bool(part[i]["annotated"]) for i in range(10))
        (3, 3)
        >>> [float(part[i]["mask"].max()) for i in range(10) if not part[i]["annotated"]][:2]
        [0.0, 0.0]
    """

    def __init__(self, dataset: Any, fraction: float, seed: int = 0) -> None:
        self.fraction = check_fraction(fraction, _FN)
        self.seed = check_data_seed(seed, _FN)
        n = map_style_length(dataset, _FN, "an IterableDataset cannot be subset")
        self.dataset = dataset
        candidates = _with_masks(dataset)
        if candidates is None:
            candidates = list(range(n))
        k = math.floor(self.fraction * len(candidates) + 0.5)
        k = max(k, 1) if self.fraction > 0 and candidates else k
        order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(self.seed)).tolist()
        self.annotated = sorted(candidates[j] for j in order[:k])
        self._keep = set(self.annotated)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if not isinstance(item, dict) or "mask" not in item:
            got = f"an item with keys {sorted(item)}" if isinstance(item, dict) else f"an item {describe(item)}"
            raise fail(_FN, "dataset", "dict items with a 'mask' (masks to keep or drop)", got,
                       "Wrap a data set with masks (egl.data.DomainFolder with a masks folder, ImageCSV with "
                       "mask_dir=, the synthetic benchmark)")
        j = operator.index(i)  # (a 0-D tensor or NumPy integer too)
        keep = (j % len(self) if j < 0 else j) in self._keep
        keep = keep and bool(item.get("annotated", True))  # (an item the data set has no mask for stays out)
        out = dict(item)
        if not keep:
            out["mask"] = torch.zeros_like(item["mask"])
        out["annotated"] = torch.tensor(keep)
        return out

    def __repr__(self) -> str:
        return (f"PartialMasks(fraction={self.fraction}, annotated={len(self.annotated)} of {len(self)}, "
                f"seed={self.seed})")


def _with_masks(dataset: Any) -> list[int] | None:
    """Indices of the items that have a mask, where the data set can tell without reading them
    (an :class:`~egl.data.image_items.ImageItems` with images lacking masks, or a ``Subset`` of
    one); None otherwise (every item a candidate)."""
    from torch.utils.data import Subset

    from egl.data.image_items import ImageItems

    if isinstance(dataset, Subset):
        inner = _with_masks(dataset.dataset)
        if inner is None:
            return None
        has = set(inner)
        return [j for j, i in enumerate(dataset.indices) if i in has]
    if isinstance(dataset, ImageItems) and getattr(dataset, "partial", False):
        return [i for i, s in enumerate(dataset.samples) if s.mask is not None]
    return None
