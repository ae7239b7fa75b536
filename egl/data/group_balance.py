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
``ImageCSV``) and ``Subset`` / ``ConcatDataset`` / ``PartialMasks`` / ``Augmented`` / ``MaskedBy``
/ ``NoisyMasks`` over them (``PermutedLabels``: its permuted labels, read when it was built);
any other map-style data set of dict items (a wrapper of your own included: it may relabel)
is read item by item once, images included (a ``Subset`` of one: its own items only). Under
``torch.distributed`` (``shard="auto"``) each rank draws ``len(dataset) // world_size`` items
per epoch from its own stream (a generator seeded with the given one's initial seed plus the
rank), so the ranks' batches differ as a ``DistributedSampler``'s do; ``shard=False`` draws
what a single process draws on every rank.
In experiments: ``data.balance`` (default none).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset, Subset, WeightedRandomSampler

from egl._check import check_choice, check_int, describe, fail

__all__ = ["GROUPINGS", "group_balanced_sampler", "item_groups", "item_labels"]

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
    columns = item_labels(dataset, by)
    stacked = torch.stack(list(columns.values()), dim=1)
    _, inverse = torch.unique(stacked, dim=0, return_inverse=True)
    return inverse


def item_labels(dataset: Dataset, by: str, *, who: tuple[str, str] = (FN, "by")) -> dict[str, Tensor]:
    """The labels grouping ``by`` reads, one ``[N]`` long tensor per key (``"label"``,
    ``"domain"``, ``"shortcut"``), read as :func:`item_groups` reads them (without loading
    images where the data set allows it). :meth:`egl.recipes.GroupDRO.set_group_sizes` counts
    its groups from them.

    ``who``: the ``(function, argument)`` an error names (``by`` is GroupDRO's ``groups``).

    Raises:
        InputError: as :func:`item_groups`.
    """
    check_choice(by, GROUPINGS, who[0], who[1])
    keys = _KEYS[by]
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise fail(who[0], "dataset", "a data set of at least one item", "an empty one", "Check the training split")
    columns = _columns(dataset, keys, who)
    return {k: columns[k].long() for k in keys}


def group_balanced_sampler(dataset: Dataset, by: str = "shortcut", *, num_samples: int | None = None,
                           generator: torch.Generator | None = None,
                           shard: bool | str = "auto") -> WeightedRandomSampler:
    """A sampler drawing ``dataset``'s items with weights ``1 / n_g`` (``n_g``: the size of the
    item's group), so that each group is drawn equally often in expectation.

    Args:
        dataset: a map-style data set of dict items (``label``, and ``domain`` / ``shortcut`` as
            ``by`` needs).
        by: ``"class"``, ``"domain"``, ``"domain_class"`` or ``"shortcut"`` (default: (class,
            shortcut) pairs, Sagawa et al.'s Waterbirds groups).
        num_samples: draws per epoch (default ``len(dataset)``; sharded: per rank, default
            ``len(dataset) // world_size``).
        generator: the sampler's ``torch.Generator`` (seed it for reproducible, resumable runs).
        shard: under ``torch.distributed``, one share of the draws per rank from a stream of its
            own (``"auto"``, default: when distributed; ``True`` requires it; ``False``: every rank
            draws the same items). The rank's generator is ``Generator().manual_seed(seed + rank)``
            with ``seed`` the given generator's initial seed (without one: a seed drawn from
            torch's global generator, the same on every rank seeded alike; that draw advances
            the global generator, under torch.distributed only).

    Example:
        >>> import torch
        >>> from egl.data import group_balanced_sampler
        >>> from egl.experiments.sources import TensorDictDataset
        >>> ds = TensorDictDataset({"image": torch.zeros(4, 3, 2, 2), "label": torch.tensor([0, 0, 0, 1])})
        >>> group_balanced_sampler(ds, "class").weights.tolist()
        [0.3333333333333333, 0.3333333333333333, 0.3333333333333333, 1.0]
    """
    from egl.train.distributed import is_distributed, rank, world_size

    if shard not in (True, False, "auto"):
        raise fail(FN, "shard", "True, False or 'auto'", repr(shard)[:100], "Pass shard='auto'")
    if shard is True and not is_distributed():
        raise fail(FN, "shard", "'auto' or False outside torch.distributed", "True with no process group",
                   "Initialise torch.distributed first (egl.train.init_distributed), or pass shard='auto'")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise fail(FN, "generator", "a torch.Generator or None", describe(generator),
                   "Pass e.g. torch.Generator().manual_seed(0)")
    groups = item_groups(dataset, by)
    sharded = shard is not False and is_distributed()
    world = world_size() if sharded else 1
    n = max(1, len(groups) // world) if num_samples is None else check_int(
        num_samples, FN, "num_samples", low=1, fix="Pass e.g. num_samples=len(dataset)")
    if sharded:
        seed = generator.initial_seed() if generator is not None else int(torch.randint(2**62, ()).item())
        generator = torch.Generator().manual_seed(seed + rank())
    counts = torch.bincount(groups)
    weights = 1.0 / counts[groups].double()
    return WeightedRandomSampler(weights, n, replacement=True, generator=generator)


def _columns(ds: Any, keys: Sequence[str], who: tuple[str, str] = (FN, "by")) -> dict[str, Tensor]:
    """``{key: [N] tensor}`` for ``ds``'s items: from its storage where it has one, else read."""
    stored = _stored(ds, keys, who)
    return stored if stored is not None else _read(ds, range(len(ds)), keys, ds, who)


def _stored(ds: Any, keys: Sequence[str], who: tuple[str, str]) -> dict[str, Tensor] | None:
    """The columns read from ``ds``'s storage, without loading an item; None where it has none
    (a ``Subset`` or ``ConcatDataset`` part without storage is read item by item, its own items only)."""
    from egl.data.augment import Augmented
    from egl.data.image_items import ImageItems
    from egl.data.masked_by import MaskedBy
    from egl.data.noisy_masks import NoisyMasks
    from egl.data.partial_masks import PartialMasks
    from egl.data.permuted_labels import PermutedLabels

    if isinstance(ds, Subset):
        inner = _stored(ds.dataset, keys, who)
        if inner is None:
            return _read(ds.dataset, ds.indices, keys, ds, who)
        index = torch.as_tensor(list(ds.indices), dtype=torch.long)
        return {k: v[index] for k, v in inner.items()}
    if isinstance(ds, ConcatDataset):
        parts = [_columns(d, keys, who) for d in ds.datasets]
        return {k: torch.cat([p[k] for p in parts]) for k in keys}
    if isinstance(ds, (PartialMasks, Augmented, MaskedBy, NoisyMasks)):  # the same items, labels untouched
        return _stored(ds.dataset, keys, who)
    if isinstance(ds, PermutedLabels):  # the same items, labels permuted (read at its construction)
        others = [k for k in keys if k != "label"]
        inner = _columns(ds.dataset, others, who) if others else {}
        return {k: ds.labels if k == "label" else inner[k] for k in keys}
    if isinstance(ds, ImageItems):
        have = ["domain", "image", "label"] + (["mask"] if ds.has_masks else [])
        if ds.samples and all(s.shortcut is not None for s in ds.samples):
            have.append("shortcut")
        _check_keys(keys, sorted(have), ds, who)
        return {k: torch.tensor([int(getattr(s, k)) for s in ds.samples], dtype=torch.long) for k in keys}
    tensors = getattr(ds, "tensors", None)  # egl's tensor-backed sets (synthetic data, TensorDictDataset)
    if isinstance(tensors, dict) and tensors and all(isinstance(v, Tensor) for v in tensors.values()):
        _check_keys(keys, sorted(tensors), ds, who)
        return {k: tensors[k] for k in keys}
    return None


def _read(ds: Any, indices: Sequence[int], keys: Sequence[str], named: Any,
          who: tuple[str, str]) -> dict[str, Tensor]:
    """The columns of ``ds[i]`` for ``i`` in ``indices``, each item read once (images included)."""
    items = [ds[i] for i in indices]
    if items and not isinstance(items[0], dict):
        raise fail(who[0], "dataset", "a data set of dict items (keys 'label', 'domain', 'shortcut')",
                   f"items like {describe(items[0])}", "Use egl's data sets, or dict items")
    if items:
        _check_keys(keys, sorted(items[0]), named, who)
    return {k: torch.stack([torch.as_tensor(item[k]) for item in items]) if items
            else torch.zeros(0, dtype=torch.long) for k in keys}


def _check_keys(keys: Sequence[str], have: Sequence[str], ds: Any, who: tuple[str, str]) -> None:
    missing = [k for k in keys if k not in have]
    if missing:
        fn, arg = who
        instead = f"Use {arg}='class', or data" if "label" in have else "Use data"
        raise fail(fn, arg, f"a grouping whose keys the items carry (it needs {list(keys)})",
                   f"items of {type(ds).__name__} with keys {list(have)}",
                   f"{instead} whose items carry " + " and ".join(repr(k) for k in missing)
                   + " (the synthetic benchmark and ImageCSV with a shortcut column carry 'shortcut')")
