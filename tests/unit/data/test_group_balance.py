"""Group-balanced sampling: group ids read from egl's data sets without loading images (equal to
reading every item), equal group frequencies in the draws, bit-exact resume, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import waterbirds_table
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

import egl
from egl import recipes
from egl.data import Augmented, ImageCSV, PartialMasks, group_balanced_sampler, item_groups
from egl.experiments.sources import TensorDictDataset


class _ItemByItem(Dataset):
    """The same items, read only through __getitem__ (the general path)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.ds[i]


def _tensors(n: int = 40, seed: int = 0) -> TensorDictDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDictDataset({"image": torch.rand(n, 3, 4, 4, generator=g),
                              "label": torch.randint(3, (n,), generator=g),
                              "domain": torch.randint(2, (n,), generator=g),
                              "shortcut": torch.randint(-1, 3, (n,), generator=g),
                              "mask": torch.rand(n, 1, 4, 4, generator=g)})


@pytest.mark.parametrize("by", ["class", "domain", "domain_class", "shortcut"])
def test_groups_from_storage_equal_groups_read_item_by_item(by: str) -> None:
    a, b = _tensors(40, 0), _tensors(30, 1)
    wrapped = ConcatDataset([Subset(a, list(range(5, 35))), PartialMasks(b, 0.5), Augmented(a, "flip")])
    fast = item_groups(wrapped, by)
    slow = item_groups(_ItemByItem(wrapped), by)
    assert torch.equal(fast, slow) and fast.shape == (100,)
    keys = {"class": ["label"], "domain": ["domain"], "domain_class": ["domain", "label"],
            "shortcut": ["label", "shortcut"]}[by]
    items = [wrapped[i] for i in range(len(wrapped))]
    pairs = [tuple(int(item[k]) for k in keys) for item in items]
    for i in range(len(items)):  # same group id <=> same key values
        for j in range(0, len(items), 7):
            assert (fast[i] == fast[j]) == (pairs[i] == pairs[j])


def test_image_tables_are_grouped_without_loading_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = ImageCSV(waterbirds_table(tmp_path), "all", columns="waterbirds", image_size=8)
    want = item_groups(_ItemByItem(ds), "shortcut")
    monkeypatch.setattr(ImageCSV, "__getitem__", lambda self, i: pytest.fail("an image was loaded"))
    assert torch.equal(item_groups(ds, "shortcut"), want)
    assert len(set(want.tolist())) == 4  # Waterbirds' (bird, place) groups
    no_shortcut = ImageCSV(waterbirds_table(tmp_path / "b"), "all", columns={"image": "img_filename", "label": "y"},
                           image_size=8)
    with pytest.raises(egl.InputError, match=r"'by' expected a grouping whose keys the items carry \(it needs "
                       r"\['label', 'shortcut'\]\), got items of ImageCSV with keys \['domain', 'image', 'label'\]"):
        item_groups(no_shortcut, "shortcut")


def test_a_wrapper_of_ones_own_is_read_item_by_item_and_a_subset_reads_only_its_items() -> None:
    """Any wrapper with a same-length .dataset was taken for a pass-through: one that relabels got
    its inner labels' groups; a Subset of a custom set read every item of the parent."""

    class Relabelled(Dataset):
        def __init__(self, dataset: Dataset) -> None:
            self.dataset = dataset

        def __len__(self) -> int:
            return len(self.dataset)  # type: ignore[arg-type]

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {**self.dataset[i], "label": torch.tensor(1 - int(i < 2))}

    base = TensorDictDataset({"image": torch.zeros(6, 1, 1, 1), "label": torch.tensor([0, 0, 0, 0, 1, 1])})
    assert item_groups(Relabelled(base), "class").tolist() == [0, 0, 1, 1, 1, 1]

    reads = []

    class Counted(_ItemByItem):
        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            reads.append(i)
            return super().__getitem__(i)

    assert item_groups(Subset(Counted(_tensors(40)), [3, 7, 9]), "class").shape == (3,)
    assert sorted(reads) == [3, 7, 9]
    with pytest.raises(egl.InputError, match=r"'dataset' expected a data set of at least one item, got an empty one"):
        item_groups(Subset(base, []), "class")


def test_every_group_is_drawn_about_equally_often() -> None:
    labels = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    ds = TensorDictDataset({"image": torch.zeros(100, 1, 1, 1), "label": labels})
    sampler = group_balanced_sampler(ds, "class", num_samples=30000, generator=torch.Generator().manual_seed(0))
    drawn = labels[torch.tensor(list(sampler))]
    share = torch.bincount(drawn, minlength=3).double() / 30000
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.015)
    assert len(group_balanced_sampler(ds, "class")) == 100


def test_a_run_on_a_balanced_loader_resumes_bit_exactly(tmp_path: Path) -> None:
    ds = _tensors(40)

    def run(steps: int, **kwargs: object) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
        g = torch.Generator().manual_seed(3)
        loader = DataLoader(ds, batch_size=8, sampler=group_balanced_sampler(ds, "shortcut", generator=g),
                            generator=g, drop_last=True)
        recipes.group_dro(model, groups="shortcut", lr=0.05).fit(loader, steps, seed=0, progress=False, **kwargs)
        return model

    straight = run(8)
    run(6, checkpoint_dir=tmp_path)  # killed in the second epoch (5 batches an epoch): the sampler's
    # generator must come back as it was at that epoch's start, not freshly seeded
    resumed = run(8, checkpoint_dir=tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_bad_arguments_are_named() -> None:
    ds = _tensors(8)
    with pytest.raises(egl.InputError, match=r"'by' expected one of .*got 'place'"):
        group_balanced_sampler(ds, "place")
    with pytest.raises(egl.InputError, match=r"'num_samples' expected an int >= 1"):
        group_balanced_sampler(ds, "class", num_samples=0)
    with pytest.raises(egl.InputError, match=r"'generator' expected a torch.Generator or None, got int 3"):
        group_balanced_sampler(ds, "class", generator=3)  # type: ignore[arg-type]
    plain = TensorDictDataset({"image": torch.zeros(4, 1, 1, 1), "label": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(egl.InputError, match=r"keys \['image', 'label'\].*carry 'domain'"):
        group_balanced_sampler(plain, "domain")
    with pytest.raises(egl.InputError, match=r"'dataset' expected a data set of dict items"):
        group_balanced_sampler(torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.zeros(4)), "class")


def _as_rank(monkeypatch: pytest.MonkeyPatch, r: int, world: int = 2) -> None:
    import egl.train.distributed as dist_utils

    monkeypatch.setattr(dist_utils, "is_distributed", lambda: True)
    monkeypatch.setattr(dist_utils, "rank", lambda: r)
    monkeypatch.setattr(dist_utils, "world_size", lambda: world)


def test_under_torch_distributed_each_rank_draws_its_own_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank drew the same items (the same seed): the ranks' batches were copies."""
    ds = _tensors(40)
    single = group_balanced_sampler(ds, "shortcut", generator=torch.Generator().manual_seed(7))
    single_draws = list(single)
    draws = {}
    for r in (0, 1):
        _as_rank(monkeypatch, r)
        sampler = group_balanced_sampler(ds, "shortcut", generator=torch.Generator().manual_seed(7))
        assert sampler.num_samples == 20 and sampler.generator.initial_seed() == 7 + r
        draws[r] = list(sampler)
        monkeypatch.undo()
        alone = group_balanced_sampler(ds, "shortcut", num_samples=20, generator=torch.Generator().manual_seed(7 + r))
        assert draws[r] == list(alone)  # the single-process draws of seed + rank
        _as_rank(monkeypatch, r)
        unsharded = group_balanced_sampler(ds, "shortcut", generator=torch.Generator().manual_seed(7), shard=False)
        assert list(unsharded) == single_draws
        monkeypatch.undo()
    assert draws[0] != draws[1]
    torch.testing.assert_close(single.weights, sampler.weights)


def test_shard_is_checked() -> None:
    ds = _tensors(8)
    with pytest.raises(egl.InputError, match=r"'shard' expected 'auto' or False outside torch.distributed, got True "
                       r"with no process group"):
        group_balanced_sampler(ds, "class", shard=True)
    with pytest.raises(egl.InputError, match=r"'shard' expected True, False or 'auto', got 'yes'"):
        group_balanced_sampler(ds, "class", shard="yes")  # type: ignore[arg-type]
