"""egl.experiments.runner.train_method: what it prepares for a recipe before training."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from egl.data import item_labels
from egl.experiments.config import DEFAULTS
from egl.experiments.runner import train_method
from egl.experiments.sources import load_source


def test_group_dro_with_the_adjustment_trains_on_the_training_sets_group_sizes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_CACHE_DIR", str(tmp_path))
    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"].update(synthetic={"train_per_domain": 24, "val_per_domain": 4, "test_per_split": 4}, batch_size=8)
    cfg["model"].update(arch="test_resnet", kwargs={})
    cfg["train"].update(steps=2, progress=False)
    cfg["methods"] = {"dro": {"recipe": "group_dro", "kwargs": {"groups": "shortcut", "adjustment": 2.0}}}
    source = load_source(cfg["data"])
    train_set = source.training_sets("all")["all"]
    recipe = train_method(cfg, "dro", source, train_set, seed=0)
    labels = item_labels(train_set, "shortcut")
    ids = labels["label"] * (source.num_classes + 1) + labels["shortcut"] + 1
    want = torch.bincount(ids, minlength=recipe.max_groups).float()
    assert recipe.group_sizes.sum() == len(train_set) == 48
    torch.testing.assert_close(recipe.group_sizes, want)
    assert not torch.equal(recipe.log_q, torch.zeros_like(recipe.log_q))  # it trained
