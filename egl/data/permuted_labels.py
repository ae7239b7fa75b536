"""Labels permuted across a data set's items: Adebayo et al.'s data randomisation test.

Adebayo et al. ("Sanity Checks for Saliency Maps", NeurIPS 2018) train a second model on the
same images with their labels randomly permuted: it can only memorise, so an explanation of
it that still looks like the explanation of the model trained on the true labels does not
depend on the relation between images and labels. ``PermutedLabels`` wraps a data set of dict
items and gives item ``i`` the label of item ``perm[i]``, for one seeded permutation ``perm``
of the items (so the class frequencies stay those of the data). Everything else of the item
(image, mask, domain, shortcut) is its own. Compare the two models' maps with
:func:`egl.metrics.map_similarity`, or ``egl sanity --checkpoint permuted.pt --against
trained.pt``; in experiments, ``data.permute_labels: <seed>`` permutes the training sets'
labels (validation and test sets keep the true ones).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch.utils.data import Dataset

from egl._check import describe, fail
from egl.data._wrapping import check_data_seed, map_style_length

__all__ = ["PermutedLabels"]

_FN = "egl.data.PermutedLabels"


class PermutedLabels(Dataset):
    """``dataset`` with its items' labels permuted (see the module docstring).

    Args:
        dataset: a map-style data set of dict items with ``label``.
        seed: the permutation's seed.

    Raises:
        InputError: a bad ``seed``, a data set without a length, or items without a ``label``.

    Attributes:
        permutation: ``[N]`` item ``i`` takes the label of item ``permutation[i]``.
        labels: ``[N]`` the labels the items now carry.

    Example:
        >>> import torch
        >>> data = [{"image": torch.rand(3, 2, 2), "label": torch.tensor(i % 3)} for i in range(6)]
        >>> perm = PermutedLabels(data, seed=0)
        >>> sorted(int(perm[i]["label"]) for i in range(6))  # the same class frequencies
        [0, 0, 1, 1, 2, 2]
    """

    def __init__(self, dataset: Any, seed: int = 0) -> None:
        self.seed = check_data_seed(seed, _FN)
        n = map_style_length(dataset, _FN)
        from egl.data.group_balance import item_labels

        self.dataset = dataset
        self.permutation = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        # every item's label, read without loading images where the data set allows it (egl's data
        # sets; others are read once, here)
        labels = item_labels(dataset, "class", who=(_FN, "dataset"))["label"]
        self.labels = labels[self.permutation]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = operator.index(i)  # (a 0-D tensor or NumPy integer too; a float or a 1-D index is refused)
        item = self.dataset[j]
        if not isinstance(item, dict) or "label" not in item:
            got = f"an item with keys {sorted(item)}" if isinstance(item, dict) else f"an item {describe(item)}"
            raise fail(_FN, "dataset", "dict items with a 'label'", got, "Wrap a data set of dict items")
        j = j % len(self) if j < 0 else j
        return {**item, "label": self.labels[j]}

    def __repr__(self) -> str:
        return f"PermutedLabels(items={len(self)}, seed={self.seed})"
