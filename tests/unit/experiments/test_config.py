"""egl.experiments.config: unknown keys are named, not ignored."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import egl
from egl.experiments.config import DEFAULTS, apply_overrides, check_keys, load_config


@pytest.mark.parametrize("override,key,hint", [
    ("train.step=5", "train.step", "train.steps"),
    ("eval.baselne=blur", "eval.baselne", "eval.baseline"),
    ("trian.steps=5", "trian", "train"),
    ("model.arhc=resnet18", "model.arhc", "model.arch"),
])
def test_a_misspelt_key_is_named_with_the_closest_one(override: str, key: str, hint: str) -> None:
    """``train.step=5`` left steps at 300 without a word."""
    with pytest.raises(egl.InputError, match=rf"'{key}' expected a known key.*Did you mean '{hint}'"):
        load_config(None, [override])


def test_a_misspelt_key_in_a_yaml_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  seed: [1]\n  lr_rate: 0.1\n")
    with pytest.raises(egl.InputError, match=r"'train.seed' expected a known key.*Did you mean 'train.seeds'"):
        load_config(cfg)


def test_open_sections_take_any_key_and_methods_are_checked() -> None:
    cfg = load_config(None, ["data.synthetic.train_per_domain=8", "model.kwargs.drop_rate=0.1",
                             "train.loss_scale.init_scale=8", "methods.mine.recipe=dre",
                             "methods.mine.kwargs.alpha=0.4"])
    assert cfg["methods"]["mine"] == {"recipe": "dre", "kwargs": {"alpha": 0.4}}
    with pytest.raises(egl.InputError, match=r"'methods.mine' expected a mapping with 'recipe'"):
        load_config(None, ["methods.mine.recpie=dre"])
    assert check_keys(DEFAULTS) is DEFAULTS


def test_a_run_shorter_than_a_recipes_schedule_warns() -> None:
    """The baselines preset ran 300 steps with IRM's anneal_steps=500: IRM never annealed."""
    from egl import recipes
    from egl.experiments.commands import PRESETS
    from egl.experiments.runner import _warn_if_a_schedule_never_starts

    from _helpers import make_model

    with pytest.warns(UserWarning, match=r"method 'irm' has anneal_steps=500 but the run has train.steps=300"):
        _warn_if_a_schedule_never_starts(recipes.irm(make_model("test_resnet")), "irm", 300)
    with pytest.warns(UserWarning, match=r"method 'align' has warmup_steps=200 .*never join"):
        _warn_if_a_schedule_never_starts(recipes.align(make_model("test_resnet")), "align", 200)
    with pytest.warns(UserWarning, match=r"the alignment term never joins"):  # (no masker phase to miss)
        _warn_if_a_schedule_never_starts(recipes.align(make_model("test_resnet"), masker="grayscale"), "gray", 200)
    with warnings.catch_warnings():  # no alignment term: the warm-up changes nothing, nothing to warn of
        warnings.simplefilter("error")
        _warn_if_a_schedule_never_starts(recipes.align(make_model("test_resnet"), align_weight=0.0), "wo_eg", 200)
    methods = PRESETS["baselines"]["methods"]
    assert methods["irm"]["kwargs"]["anneal_steps"] < DEFAULTS["train"]["steps"]
    assert methods["align"]["kwargs"]["warmup_steps"] < DEFAULTS["train"]["steps"]


def test_a_mask_fraction_for_a_method_that_reads_no_masks_warns() -> None:
    """data.mask_fraction=0.1 in a grid with ERM and ALIGN's learned masker changed nothing for
    them, silently: their rows looked like partial-annotation results."""
    import warnings

    from egl import recipes
    from egl.experiments.runner import _warn_if_masks_are_not_read

    from _helpers import make_model

    partial = {"mask_fraction": 0.1}
    with pytest.warns(UserWarning, match=r"method 'erm' reads no masks from the data: data.mask_fraction=0.1 "
                                         r"changes nothing for it"):
        _warn_if_masks_are_not_read(recipes.erm(make_model("test_resnet")), "erm", partial)
    with pytest.warns(UserWarning, match=r"method 'align' reads no masks .*its masker 'learned' makes its own"):
        _warn_if_masks_are_not_read(recipes.align(make_model("test_resnet")), "align", partial)
    with pytest.warns(UserWarning, match=r"method 'off' reads no masks from the data \(align_weight=0.0: it aligns "
                                         r"to none\).*Give it an align_weight > 0"):  # (alignment switched off)
        _warn_if_masks_are_not_read(recipes.align(make_model("test_resnet"), masker="ground_truth", align_weight=0),
                                    "off", partial)
    gt = recipes.align(make_model("test_resnet"), masker="ground_truth")
    assert gt.reads_masks and not recipes.erm(make_model("test_resnet")).reads_masks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_masks_are_not_read(gt, "gt", partial)
        _warn_if_masks_are_not_read(recipes.erm(make_model("test_resnet")), "erm", {"mask_fraction": 1.0})
        _warn_if_masks_are_not_read(recipes.erm(make_model("test_resnet")), "erm", {})


def test_data_balance_names_a_grouping_the_training_items_lack() -> None:
    """data.balance=shortcut on data without shortcut labels failed when the first run built its
    loader, in a made folder."""
    import torch

    from egl.experiments.runner import check_balance
    from egl.experiments.sources import TensorDictDataset

    plain = TensorDictDataset({"image": torch.zeros(4, 3, 2, 2), "label": torch.tensor([0, 1, 0, 1]),
                               "domain": torch.zeros(4, dtype=torch.long)})
    check_balance({"data": {"balance": "domain_class"}}, {"a": plain})
    check_balance({"data": {}}, {"a": plain})
    with pytest.raises(egl.InputError, match=r"egl.experiments: 'data.balance' expected a grouping the training "
                                             r"items carry, got 'shortcut' for run 'a' \(.*keys \['domain', 'image', "
                                             r"'label'\].*Set data.balance=class or domain"):
        check_balance({"data": {"balance": "shortcut"}}, {"a": plain})


def test_worst_group_selection_is_checked_against_the_validation_data_first() -> None:
    """train.select=worst_group on data without shortcut labels, or with eval.min_group_size above
    every group, failed at the first measurement, in a made folder."""
    import torch

    from egl.experiments.runner import check_val_set
    from egl.experiments.sources import TensorDictDataset

    plain = TensorDictDataset({"image": torch.zeros(4, 3, 2, 2), "label": torch.tensor([0, 1, 0, 1])})
    grouped = TensorDictDataset({**plain.tensors, "shortcut": torch.tensor([0, 1, 1, 1])})
    check_val_set({"eval": {"min_group_size": 2}}, grouped, "worst_group")
    check_val_set({"eval": {}}, plain, "acc")
    with pytest.raises(egl.InputError, match=r"'train.select' expected validation data with shortcut labels for "
                                             r"'worst_group'.*or train.select=acc"):
        check_val_set({"eval": {}}, plain, "worst_group")
    with pytest.raises(egl.InputError, match=r"'eval.min_group_size' expected at most the size of some validation "
                                             r"group .*got 3; the largest validation group has 2 images"):
        check_val_set({"eval": {"min_group_size": 3}}, grouped, "worst_group")


def test_exponent_numbers_are_numbers_on_the_command_line_and_in_files(tmp_path: Path) -> None:
    """PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string: lr=1e-3 reached the recipes as '1e-3'."""
    cfg = apply_overrides(DEFAULTS, ["train.lr=1e-3", "eval.ks=[1, 5E+1]", "output=run1e5"])
    assert cfg["train"]["lr"] == 0.001 and cfg["eval"]["ks"] == [1, 50.0] and cfg["output"] == "run1e5"
    (tmp_path / "c.yaml").write_text("train: {lr: 5e-5, steps: 10}\n")
    loaded = load_config(tmp_path / "c.yaml")
    assert loaded["train"]["lr"] == 5e-5 and loaded["train"]["steps"] == 10


def test_resume_compares_channels_last_as_fit_resolves_it() -> None:
    from egl.experiments.resume import config_differences

    old = {"train": {"channels_last": False, "device": "cpu", "precision": "bf16"}}  # the default before "auto"
    assert config_differences(old, {"train": {"device": "cpu", "precision": "bf16"}}) == []
    cuda = {"train": {"channels_last": False, "device": "cuda", "precision": "bf16"}}
    assert config_differences(cuda, {"train": {"device": "cuda", "precision": "bf16"}}) == ["train.channels_last"]


def test_methods_star_sets_a_key_in_every_method_that_has_it() -> None:
    from egl.experiments.commands import PRESETS
    from egl.experiments.config import merge

    cfg = merge(DEFAULTS, {"methods": {**PRESETS["ablation"]["methods"], "erm": {"recipe": "erm"}}})
    out = apply_overrides(cfg, ["methods.*.kwargs.warmup_steps=4"])
    warm = {m: (s.get("kwargs") or {}).get("warmup_steps") for m, s in out["methods"].items()}
    assert warm == {**{m: 4 for m in PRESETS["ablation"]["methods"]}, "erm": None}  # erm has no warm-up: left alone
    assert cfg["methods"]["align"]["kwargs"]["warmup_steps"] == 50  # (a copy)
    with pytest.raises(egl.InputError, match=r"'overrides' expected a methods.\*.<key> that some method sets, got "
                       r"'methods.\*.kwargs.anneal_steps=4', which no method of \['align'"):
        apply_overrides(cfg, ["methods.*.kwargs.anneal_steps=4"])
