"""Which domains a run trains on (train.domains = all / each / loo / a list), which test splits
are in distribution for it, and its validation data."""

from __future__ import annotations

from pathlib import Path

import pytest
from _helpers import domain_tree

import egl
from egl.experiments.sources import load_source


@pytest.fixture
def folder(tmp_path: Path) -> dict:
    return {"name": "folder", "root": str(domain_tree(tmp_path / "data", domains=("A", "B", "C"))), "image_size": 32}


def test_each_mode_names_its_runs_and_their_domains(folder: dict) -> None:
    source = load_source(folder)
    assert source.training_domains("all") == {"all": ["A", "B", "C"]}
    assert source.training_domains("each") == {"A": ["A"], "B": ["B"], "C": ["C"]}
    assert source.training_domains("loo") == {"all-but-A": ["B", "C"], "all-but-B": ["A", "C"],
                                              "all-but-C": ["A", "B"]}
    assert source.training_domains(["C", "A"]) == {"C+A": ["C", "A"]}
    sets = source.training_sets("loo")
    assert len(sets["all-but-A"]) == len(source.train["B"]) + len(source.train["C"]) == 24
    assert len(source.training_sets(["B"])["B"]) == 12
    assert source.in_distribution("A", ["A", "B"]) and not source.in_distribution("C", ["A", "B"])


def test_synthetic_test_splits_know_their_domain() -> None:
    source = load_source({"name": "synthetic", "synthetic": {"train_per_domain": 8, "val_per_domain": 2,
                                                             "test_per_split": 4}})
    assert source.in_distribution("test_id/domain0", ["domain0"])
    assert not source.in_distribution("test_id/domain1", ["domain0"])  # the other training domain's images
    assert not any(source.in_distribution(s, ["domain0", "domain1"]) for s in ("random", "flipped", "novel"))


@pytest.mark.parametrize("domains, match", [
    ("A", r"Write one domain as a list: train.domains=\[A\]"),
    ("every", "Pick 'all' .*'loo' \\(leave one domain out\\)"),
    (["A", "Z"], r"Remove \['Z'\]"),
    (["A", "A"], "List each domain once"),
    ([], "a list of distinct domains"),
])
def test_bad_train_domains_are_named(folder: dict, domains: object, match: str) -> None:
    with pytest.raises(egl.InputError, match=f"'train.domains' expected .*{match}"):
        load_source(folder).training_domains(domains)


def test_leave_one_out_needs_two_domains(folder: dict) -> None:
    with pytest.raises(egl.InputError, match="at least two domains for 'loo'"):
        load_source({**folder, "domains": ["B"]}).training_domains("loo")


def test_a_tensor_dict_of_unequal_lengths_or_no_tensors_is_named() -> None:
    import torch

    from egl.experiments.sources import TensorDictDataset

    with pytest.raises(egl.InputError, match=r"'tensors' expected tensors of one length .*'image': 4, 'label': 3"):
        TensorDictDataset({"image": torch.zeros(4, 3, 2, 2), "label": torch.zeros(3)})
    for bad in ({}, {"label": [0, 1]}):
        with pytest.raises(egl.InputError, match=r"'tensors' expected a non-empty dict of tensors"):
            TensorDictDataset(bad)
    assert len(TensorDictDataset({"label": torch.arange(3)})) == 3


def test_data_augment_applies_to_training_sets_only(folder: dict) -> None:
    import torch

    from egl.data import Augment, Augmented

    source = load_source({**folder, "augment": {"crop_scale": [0.5, 0.9]}})
    assert all(isinstance(ds.dataset.augment, Augment) for ds in source.train.values())  # Subset of a DomainFolder
    assert source.train["A"].dataset.augment.crop_scale == (0.5, 0.9)
    assert all(ds.dataset.augment is None for part in (source.val, source.tests) for ds in part.values())
    torch.manual_seed(0)
    assert source.train["A"][0]["image"].shape == (3, 32, 32)
    tiny = {"train_per_domain": 8, "val_per_domain": 2, "test_per_split": 4}
    synthetic = load_source({"name": "synthetic", "synthetic": tiny, "augment": "domainbed"})
    assert all(isinstance(ds, Augmented) for ds in synthetic.train.values())
    assert not any(isinstance(ds, Augmented) for part in (synthetic.val, synthetic.tests) for ds in part.values())
    plain = load_source({"name": "synthetic", "synthetic": tiny, "augment": "none"})
    assert not any(isinstance(ds, Augmented) for ds in plain.train.values())


def test_masks_from_a_frozen_masker_replace_the_training_masks_before_augmentation(folder: dict) -> None:
    import torch

    from egl.data import Augmented, MaskedBy
    from egl.maskers import GrayscaleMasker

    gray = GrayscaleMasker()
    tiny = {"train_per_domain": 8, "val_per_domain": 2, "test_per_split": 4}
    synthetic = load_source({"name": "synthetic", "synthetic": tiny, "augment": "flip", "masks_from": "grayscale"})
    torch.manual_seed(0)
    for ds in synthetic.train.values():
        assert isinstance(ds, Augmented) and isinstance(ds.dataset, MaskedBy)
        item = ds[3]  # flipped or not, the mask is the plain image's, moved with it
        assert torch.allclose(item["mask"].float(), gray(item["image"][None])[0], atol=1e-3)
    test = next(iter(synthetic.tests.values()))[0]
    assert not torch.allclose(test["mask"].float(), gray(test["image"][None])[0], atol=1e-2)  # tests keep the data's
    # Folder data without masks gains them; the augmentation moves to the wrapper.
    clamp = {"name": "grayscale", "kwargs": {"rescale": "clamp"}}
    source = load_source({**folder, "augment": "flip", "masks_from": clamp})
    ds = source.train["A"]
    assert isinstance(ds, Augmented) and isinstance(ds.dataset, MaskedBy) and ds.dataset.dataset.dataset.augment is None
    item = ds[0]
    assert torch.allclose(item["mask"].float(), GrayscaleMasker("clamp")(item["image"][None])[0], atol=1e-3)
    for bad in ("learned", "ground_truth", "sammy", {"name": "grayscale", "extra": 1}, 3):
        with pytest.raises(egl.InputError, match=r"'data.masks_from' expected null, a frozen masker's name"):
            load_source({"name": "synthetic", "synthetic": tiny, "masks_from": bad})


def test_mask_noise_degrades_folder_masks_before_the_augmentation(tmp_path: Path) -> None:
    import torch

    from egl.data import Augmented, NoisyMasks, degrade_mask

    root = domain_tree(tmp_path / "masked", masks=True)
    data = {"name": "folder", "root": str(root), "image_size": 32, "augment": "flip"}
    noisy = load_source({**data, "mask_noise": {"dilate": 2}})
    ds = noisy.train["A"]
    assert isinstance(ds, Augmented) and isinstance(ds.dataset, NoisyMasks)  # read plain, degraded, then augmented
    plain = ds.dataset.dataset[0]
    assert torch.equal(ds.dataset[0]["mask"], degrade_mask(plain["mask"].float(), dilate=2).to(plain["mask"].dtype))
    assert not isinstance(load_source(data).train["A"], Augmented)  # without noise: augmented as read
    with pytest.raises(egl.InputError, match="'data.mask_noise' expected null for data without masks"):
        load_source({"name": "folder", "root": str(domain_tree(tmp_path / "bare")), "mask_noise": {"box": True}})


def test_the_evaluation_source_leaves_the_training_settings_out(folder: dict) -> None:
    import torch

    from egl.experiments.sources import evaluation_source

    trained = {**folder, "masks_from": "grayscale", "mask_fraction": 0.5, "mask_noise": {"box": True},
               "permute_labels": 1}
    source = evaluation_source(trained)  # mask-less data: load_source would need the masker's masks
    assert source.permute_labels is None
    plain = load_source(folder)
    assert set(source.tests) == set(plain.tests)
    split = next(iter(plain.tests))
    assert torch.equal(source.tests[split][0]["image"], plain.tests[split][0]["image"])
