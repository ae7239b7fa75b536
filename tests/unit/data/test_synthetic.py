"""The synthetic shortcut benchmark: determinism, structure, disjointness, caching."""

from __future__ import annotations

import os

import pytest
import torch

import egl
from egl.data import synthetic
from egl.data.synthetic import SPLITS, SyntheticConfig, SyntheticShortcuts, build
from egl.recipes import as_batch

SMALL = SyntheticConfig(train_per_domain=200, val_per_domain=20, test_per_split=100)


@pytest.fixture(scope="module")
def data() -> dict[str, dict[str, torch.Tensor]]:
    return build(SMALL, cache=False)


def test_every_split_has_images_masks_and_labels(data) -> None:
    assert set(data) == set(SPLITS)
    for split, d in data.items():
        n = d["label"].shape[0]
        assert d["image"].shape == (n, 3, 64, 64) and d["image"].dtype == torch.float32
        assert d["mask"].shape == (n, 1, 64, 64)
        assert 0.0 <= float(d["image"].min()) and float(d["image"].max()) <= 1.0
        assert set(d["mask"].unique().tolist()) <= {0.0, 1.0}
        assert set(d["label"].unique().tolist()) <= set(range(5))
        frac = d["mask"].mean(dim=(1, 2, 3))
        assert float(frac.min()) > 0.02 and float(frac.max()) < 0.6, split  # a digit is always visible


def test_same_seed_same_data_other_seed_other_data(data) -> None:
    again = build(SMALL, cache=False)
    for split in SPLITS:
        assert torch.equal(again[split]["image"], data[split]["image"])
    other = build(SyntheticConfig(seed=1, train_per_domain=200, val_per_domain=20, test_per_split=100), cache=False)
    assert not torch.equal(other["train"]["image"], data["train"]["image"])


def test_backgrounds_follow_the_stated_correlations(data) -> None:
    train = data["train"]
    for d, p in enumerate(SMALL.p):
        sel = train["domain"] == d
        agree = (train["shortcut"][sel] == train["label"][sel]).float().mean()
        assert abs(float(agree) - p) < 0.07
    flipped = data["flipped"]
    assert torch.equal(flipped["shortcut"], (flipped["label"] + 1) % 5)
    assert float((data["random"]["shortcut"] == data["random"]["label"]).float().mean()) < 0.4
    assert bool((data["novel"]["shortcut"] == -1).all())
    assert data["test_id"]["domain"].unique().tolist() == [0, 1]


def test_digit_contrasts_with_its_background(data) -> None:
    img, mask = data["test_id"]["image"], data["test_id"]["mask"]
    luma = (0.299 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2])[:, None]
    inside = (luma * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3))
    outside = (luma * (1 - mask)).sum((1, 2, 3)) / (1 - mask).sum((1, 2, 3))
    assert float((inside - outside).abs().median()) > 0.2


def test_train_and_test_use_disjoint_digits() -> None:
    src = synthetic._sources(SMALL)
    assert not set(src["train_idx"].tolist()) & set(src["test_idx"].tolist())
    assert set(src["labels"][src["train_idx"]].unique().tolist()) == set(range(5))


def test_cache_is_written_once_reused_and_keyed_by_config(tmp_path) -> None:
    cfg = SyntheticConfig(train_per_domain=10, val_per_domain=2, test_per_split=5)
    first = build(cfg, tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1 and files[0].name == f"{cfg.key()}.pt"
    stamp = files[0].stat().st_mtime_ns
    second = build(cfg, tmp_path)
    assert files[0].stat().st_mtime_ns == stamp
    assert torch.equal(first["train"]["image"], second["train"]["image"])
    build(SyntheticConfig(seed=3, train_per_domain=10, val_per_domain=2, test_per_split=5), tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_a_damaged_cache_entry_is_rebuilt(tmp_path) -> None:
    cfg = SyntheticConfig(train_per_domain=10, val_per_domain=2, test_per_split=5)
    good = build(cfg, tmp_path)
    path = tmp_path / f"{cfg.key()}.pt"
    path.write_bytes(b"not a checkpoint")
    again = build(cfg, tmp_path)
    assert torch.equal(good["val"]["image"], again["val"]["image"])


def test_dataset_items_are_batches_recipes_accept(tmp_path) -> None:
    cfg = SyntheticConfig(train_per_domain=10, val_per_domain=2, test_per_split=5)
    ds = SyntheticShortcuts("train", cfg, tmp_path)
    assert len(ds) == 20
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    parsed = as_batch(batch)
    assert parsed.x.shape == (4, 3, 64, 64) and parsed.mask is not None and parsed.domain is not None
    with pytest.raises(egl.InputError, match="'split' expected one of"):
        SyntheticShortcuts("tset", cfg, tmp_path)


def test_default_cache_root_honours_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("EGL_CACHE_DIR", os.fspath(tmp_path))
    assert synthetic._default_root() == tmp_path / "synthetic"


@pytest.mark.parametrize(("field", "value", "message"), [
    ("p", (1.5, 0.8), r"'cfg.p' expected a non-empty tuple of probabilities in \[0, 1\]"),
    ("p", (), r"'cfg.p' expected"),
    ("train_per_domain", 0, r"'cfg.train_per_domain' expected an int >= 2"),
    ("test_per_split", 1, r"'cfg.test_per_split' expected an int >= 2"),
    ("seed", 1.5, r"'cfg.seed' expected an int >= 0"),
    ("digit_size", (50, 34), r"'cfg.digit_size' expected \(low, high\) pixel heights"),
    ("digit_size", (80, 100), r"'cfg.digit_size' expected"),
    ("max_rotation", -10, r"'cfg.max_rotation' expected degrees in \[0, 180\]"),
    ("min_contrast", 2, r"'cfg.min_contrast' expected a luminance difference in \[0, 1\)"),
    ("cameras", ((1, 1, 1), (1, 1, 1)), r"'cfg.cameras' expected one Camera per training domain"),
])
def test_config_values_out_of_range_are_named(field: str, value: object, message: str) -> None:
    """Out-of-range values rendered silently (p=1.5, digits larger than the image) or crashed
    inside torch (a count of 0, a reversed size range)."""
    import dataclasses

    cfg = dataclasses.replace(SMALL, **{field: value})
    with pytest.raises(egl.InputError, match=message):
        build(cfg, cache=False)


def test_fewer_test_images_than_training_domains_are_named() -> None:
    import dataclasses

    cfg = dataclasses.replace(SMALL, p=(0.9, 0.8, 0.7), test_per_split=2)
    with pytest.raises(egl.InputError, match=r"'cfg.test_per_split' expected at least one image per training domain"):
        build(cfg, cache=False)
