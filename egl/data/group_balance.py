"""Group-balanced sampling: draw training images so that every group is equally likely.

Sagawa et al. (ICLR 2020) train GroupDRO on batches drawn with weights ``1 / n_g`` (their
``--reweight_groups``); Idrissi et al. ("Simple data balancing achieves competitive worst-group
accuracy", CLeaR 2022) show that ERM on such batches is a strong baseline by itself. A group
is what :class:`egl.recipes.GroupDRO` calls one: ``"class"``, ``"domain"``, ``"domain_class"``
or ``"shortcut"`` ((class, shortcut) pairs).

``group_balanced_sampler(dataset, by)`` returns a ``torch.utils.data.WeightedRandomSampler``
(with replacement, ``len(dataset)`` draws per epoch unless ``num_samples``) for a
``DataLoader(dataset, sampler=...)``. Pass it a seeded ``generator``: :func:`egl.train.fit`
then replays its draws on resume (bit-exact). The groups are read without loading images
where the data set allows it: egl's data sets (tensor-backed synthetic data, ``DomainFolder``,
``ImageCSV``) and ``Subset`` / ``ConcatDataset`` / ``PartialMasks`` / ``Augmented`` over them;
any other map-style data set of dict items is read item by item once (images included).
In experiments: ``data.balance`` (default none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset, WeightedRandomSampler

from egl._check import check_choice, check_int, describe, fail

__all__ = ["GROUPINGS", "group_balanced_sampler", "item_groups"]

GROUPINGS = ("class", "domain", "domain_class", "shortcut")
_KEYS = {"class": ("label",), "domain": ("domain",), "domain_class": ("domain", "label"),
         "shortcut": ("label", "shortcut")}
FN = "egl.data.group_balanced_sampler"


def item_groups(dataset: Dataset, by: str) -> Tensor:
    """Each item's group index (0 .. number of groups - 1, groups in sorted order of their keys).

    Raises:
        InputError: an unknown ``by``; items without the keys ``by`` needs (``label``,
            ``domain``, ``shortcut``), naming the keys they have.
    """
    check_choice(by, GROUPINGS, FN, "by")
    keys = _KEYS[by]
    columns = _columns(dataset, keys)
    stacked = torch.stack([columns[k].long() for k in keys], dim=1)
    if stacked.shape[0] == 0:
        raise fail(FN, "dataset", "a data set of at least one item", "an empty one", "Check the training split")
    _, inverse = torch.unique(stacked, dim=0, return_inverse=True)
    return inverse


def group_balanced_sampler(dataset: Dataset, by: str = "shortcut", *, num_samples: int | None = None,
                           generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """A sampler drawing ``dataset``'s items with weights ``1 / n_g`` (``n_g``: the size of the
    item's group), so that each group is drawn equally often in expectation.

    Args:
        dataset: a map-style data set of dict items (``label``, and ``domain`` / ``shortcut`` as
            ``by`` needs).
        by: ``"class"``, ``"domain"``, ``"domain_class"`` or ``"shortcut"`` (default: (class,
            shortcut) pairs, Sagawa et al.'s Waterbirds groups).
        num_samples: draws per epoch (default ``len(dataset)``).
        generator: the sampler's ``torch.Generator`` (seed it for reproducible, resumable runs).

    Example:
        >>> import torch
        >>> from egl.data import group_balanced_sampler
        >>> from egl.experiments.sources import TensorDictDataset
        >>> ds = TensorDictDataset({"image": torch.zeros(4, 3, 2, 2), "label": torch.tensor([0, 0, 0, 1])})
        >>> group_balanced_sampler(ds, "class").weights.tolist()
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
    """
    groups = item_groups(dataset, by)
    n = len(groups) if num_samples is None else check_int(num_samples, FN, "num_samples", low=1,
                                                          fix="Pass e.g. num_samples=len(dataset)")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise fail(FN, "generator", "a torch.Generator or None", describe(generator),
                   "Pass e.g. torch.Generator().manual_seed(0)")
    counts = torch.bincount(groups)
    weights = 1.0 / counts[groups].double()
    return WeightedRandomSampler(weights, n, replacement=True, generator=generator)


def _columns(ds: Any, keys: Sequence[str]) -> dict[str, Tensor]:
    """``{key: [N] tensor}`` for ``ds``'s items, read from its storage where it has one."""
    if isinstance(ds, Subset):
        inner = _columns(ds.dataset, keys)
        index = torch.as_tensor(list(ds.indices), dtype=torch.long)
        return {k: v[index] for k, v in inner.items()}
    if isinstance(ds, ConcatDataset):
        parts = [_columns(d, keys) for d in ds.datasets]
        return {k: torch.cat([p[k] for p in parts]) for k in keys}
    tensors = getattr(ds, "tensors", None)
    if isinstance(tensors, dict) and all(isinstance(v, Tensor) for v in tensors.values()):
        _check_keys(keys, sorted(tensors), ds)
        return {k: tensors[k] for k in keys}
    samples = getattr(ds, "samples", None)
    if isinstance(samples, list) and samples and all(hasattr(samples[0], a) for a in ("label", "domain", "shortcut")):
        field = {"label": "label", "domain": "domain", "shortcut": "shortcut"}
        if "shortcut" in keys and any(s.shortcut is None for s in samples):
            _check_keys(keys, ["domain", "image", "label"], ds)  # (no shortcut column: named)
        return {k: torch.tensor([getattr(s, field[k]) for s in samples]) for k in keys}
    inner_ds = getattr(ds, "dataset", None)  # PartialMasks, Augmented: same items, same order
    if isinstance(inner_ds, Dataset) and _same_length(inner_ds, ds):
        return _columns(inner_ds, keys)
    items = [ds[i] for i in range(len(ds))]  # the general case: read once
    if not all(isinstance(item, dict) for item in items[:1]):
        raise fail(FN, "dataset", "a data set of dict items (keys 'label', 'domain', 'shortcut')",
                   f"items like {describe(items[0]) if items else 'none'}", "Use egl's data sets, or dict items")
    _check_keys(keys, sorted(items[0]) if items else [], ds)
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) for k in keys}


def _same_length(a: Any, b: Any) -> bool:
    try:
        return len(a) == len(b)
    except TypeError:
        return False


def _check_keys(keys: Sequence[str], have: Sequence[str], ds: Any) -> None:
    missing = [k for k in keys if k not in have]
    if missing:
        raise fail(FN, "by", f"a grouping whose keys the items carry (it needs {list(keys)})",
                   f"items of {type(ds).__name__} with keys {list(have)}",
                   "Use by='class', or data whose items carry " + " and ".join(repr(k) for k in missing)
                   + " (the synthetic benchmark and ImageCSV with a shortcut column carry 'shortcut')")
