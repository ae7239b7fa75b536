"""PartialMasks: a seeded share of the images keeps its masks; the others are flagged and blanked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import egl
from egl.data import PartialMasks
from egl.experiments.sources import TensorDictDataset, load_source


def _data(n: int = 20) -> TensorDictDataset:
    return TensorDictDataset({"image": torch.rand(n, 3, 4, 4), "label": torch.arange(n) % 2,
                              "mask": torch.ones(n, 1, 4, 4)})


def test_the_share_kept_and_the_rest_blanked_and_flagged() -> None:
    data = _data()
    part = PartialMasks(data, 0.25, seed=3)
    items = [part[i] for i in range(20)]
    kept = [i for i, it in enumerate(items) if it["annotated"]]
    assert kept == part.annotated and len(kept) == 5
    for i, it in enumerate(items):
        assert torch.equal(it["image"], data[i]["image"]) and int(it["label"]) == int(data[i]["label"])
        assert torch.equal(it["mask"], data[i]["mask"] if i in kept else torch.zeros(1, 4, 4))
    assert PartialMasks(data, 0.25, seed=3).annotated == kept  # seeded
    assert PartialMasks(data, 0.25, seed=4).annotated != kept
    assert set(PartialMasks(data, 0.5, seed=3).annotated) >= set(kept)  # one draw order: larger shares nest
    assert bool(part[-1]["annotated"]) == (19 in kept)  # negative indices as the data set reads them
    assert bool(part[torch.tensor(kept[0])]["annotated"]) and bool(part[np.int64(kept[0])]["annotated"])
    batch = torch.utils.data.default_collate(items[:4])
    assert batch["annotated"].dtype == torch.bool and batch["annotated"].shape == (4,)


def test_edges_of_the_share() -> None:
    data = _data(10)
    assert PartialMasks(data, 0.0).annotated == [] and PartialMasks(data, 1.0).annotated == list(range(10))
    assert len(PartialMasks(data, 0.01).annotated) == 1  # a share > 0 keeps at least one
    assert len(PartialMasks(data, 0.25).annotated) == 3  # 2.5 rounds half up


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 1.5}, r"'fraction' expected a share of the images in \[0, 1\], got 1.5"),
    ({"fraction": float("nan")}, r"'fraction' expected a share"),
    ({"fraction": True}, r"'fraction' expected a share"),
    ({"fraction": 0.5, "seed": -1}, r"'seed' expected an int in \[0, 2\*\*63\)"),
])
def test_bad_arguments_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(egl.InputError, match=match):
        PartialMasks(_data(), **kwargs)


def test_items_without_masks_are_named() -> None:
    part = PartialMasks(TensorDictDataset({"image": torch.rand(4, 3, 4, 4), "label": torch.zeros(4, dtype=torch.long)}),
                        0.5)
    with pytest.raises(egl.InputError, match=r"'dataset' expected dict items with a 'mask'.*keys \['image', 'label'\]"):
        part[0]


def test_the_synthetic_source_keeps_a_share_of_each_training_domain() -> None:
    data = {"name": "synthetic", "synthetic": {"train_per_domain": 40}, "mask_fraction": 0.1, "mask_seed": 1}
    source = load_source(data)
    kept = {}
    for name, ds in source.train.items():
        flags = torch.stack([ds[i]["annotated"] for i in range(len(ds))])
        assert int(flags.sum()) == round(0.1 * len(ds)), name
        kept[name] = ds.annotated
    assert kept["domain0"] != kept["domain1"]  # each domain its own draw
    assert all("annotated" not in ds[0] for ds in source.tests.values())  # test sets keep every mask
    assert "annotated" not in load_source({"name": "synthetic", "synthetic": {"train_per_domain": 40}}).train[
        "domain0"][0]
