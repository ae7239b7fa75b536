"""PermutedLabels: one seeded permutation of the labels across the items; the rest of each item its own."""

from __future__ import annotations

import pytest
import torch

import egl
from egl.data import PermutedLabels, item_labels
from egl.experiments.sources import TensorDictDataset, load_source


def _data(n: int = 12) -> TensorDictDataset:
    return TensorDictDataset({"image": torch.rand(n, 3, 4, 4), "label": torch.arange(n) % 3,
                              "domain": torch.arange(n) // 6, "mask": torch.rand(n, 1, 4, 4)})


def test_labels_are_permuted_and_everything_else_kept() -> None:
    data = _data()
    perm = PermutedLabels(data, seed=1)
    assert len(perm) == 12 and sorted(perm.permutation.tolist()) == list(range(12))
    for i in range(12):
        item, plain = perm[i], data[i]
        assert int(item["label"]) == int(data[int(perm.permutation[i])]["label"])
        for key in ("image", "domain", "mask"):
            assert torch.equal(item[key], plain[key])
    assert sorted(int(perm[i]["label"]) for i in range(12)) == sorted((torch.arange(12) % 3).tolist())
    assert [int(perm[i]["label"]) for i in range(12)] != (torch.arange(12) % 3).tolist()
    assert torch.equal(PermutedLabels(data, seed=1).permutation, perm.permutation)
    assert not torch.equal(PermutedLabels(data, seed=2).permutation, perm.permutation)
    assert int(perm[-1]["label"]) == int(perm[11]["label"]) and "seed=1" in repr(perm)


def test_group_labels_read_the_permuted_labels_without_loading_items() -> None:
    data = _data()
    perm = PermutedLabels(data, seed=0)

    class Counting(TensorDictDataset):
        reads = 0

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            Counting.reads += 1
            return super().__getitem__(i)

    counted = PermutedLabels(Counting(data.tensors), seed=0)
    labels = item_labels(counted, "domain_class")
    assert Counting.reads == 0
    assert torch.equal(labels["label"], torch.stack([perm[i]["label"] for i in range(12)]))
    assert torch.equal(labels["domain"], data.tensors["domain"])


def test_indices_are_integers() -> None:
    perm = PermutedLabels(_data(), seed=0)
    assert torch.equal(perm[torch.tensor(3)]["image"], perm[3]["image"])
    with pytest.raises(TypeError):
        perm[1.5]


def test_bad_arguments_are_named() -> None:
    with pytest.raises(egl.InputError, match="'seed' expected an int in \\[0, 2\\*\\*63\\)"):
        PermutedLabels(_data(), seed=-1)
    with pytest.raises(egl.InputError, match="'dataset' expected a map-style data set"):
        PermutedLabels(iter([]))
    with pytest.raises(egl.InputError, match="'dataset'"):
        PermutedLabels([{"image": torch.rand(3, 2, 2)}])


def test_experiments_permute_each_runs_pooled_training_labels_only() -> None:
    from egl.experiments.config import DEFAULTS, apply_overrides, check_values
    from egl.experiments.runner import check_selection

    synth = {"train_per_domain": 16, "val_per_domain": 4, "test_per_split": 4}
    plain = load_source({**DEFAULTS["data"], "synthetic": synth})
    perm = load_source({**DEFAULTS["data"], "synthetic": synth, "permute_labels": 3})
    pooled, shuffled = plain.training_sets("all")["all"], perm.training_sets("all")["all"]
    assert isinstance(shuffled, PermutedLabels) and len(shuffled) == len(pooled) == 32
    got = [int(shuffled[i]["label"]) for i in range(32)]
    want = [int(pooled[i]["label"]) for i in range(32)]
    assert got != want and sorted(got) == sorted(want)
    crossed = (shuffled.permutation[:16] >= 16).any() and (shuffled.permutation[16:] < 16).any()
    assert bool(crossed)  # across the domains, not within each
    assert torch.equal(shuffled[0]["image"], pooled[0]["image"])
    each = perm.training_sets("each")
    assert set(each) == set(plain.train) and all(isinstance(ds, PermutedLabels) for ds in each.values())
    split = next(iter(plain.tests))
    assert int(perm.tests[split][0]["label"]) == int(plain.tests[split][0]["label"])
    with pytest.raises(egl.InputError, match="'data.permute_labels' expected an int >= 0 or None"):
        check_values(apply_overrides(DEFAULTS, ["data.permute_labels=-1"]))
    with pytest.warns(UserWarning, match="train.select='acc' with data.permute_labels"):
        check_selection(apply_overrides(DEFAULTS, ["data.permute_labels=0", "train.select=acc"]))
