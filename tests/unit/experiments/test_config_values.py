"""egl.experiments.config.check_values: a bad value is named before any folder is made or step is run.

``--set train.steps=abc`` was a raw ``int()`` traceback from inside a run, ``train.steps=1.9``
trained one step, ``train.progress=maybe`` was read as True, ``train.seeds=[]`` an IndexError, and
each left an empty ``--out`` folder behind.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

import egl
from egl.cli import main
from egl.experiments.config import DEFAULTS, apply_overrides, check_values
from egl.experiments.demo import DEMO
from egl.experiments.runner import check_selection, run

TINY = ["data.synthetic.train_per_domain=8", "data.synthetic.val_per_domain=2", "data.synthetic.test_per_split=4",
        "data.batch_size=4", "model.arch=test_resnet", "train.steps=2", "train.progress=false"]

BAD = [
    ("train.steps=abc", r"'train.steps' expected an int >= 1, got 'abc'\. Set e\.g\. train\.steps=300\."),
    ("train.steps=1.9", r"'train.steps' expected an int >= 1, got 1\.9\."),
    ("train.steps=true", r"'train.steps' expected an int >= 1, got True\."),
    ("train.steps=0", r"'train.steps' expected an int >= 1, got 0\."),
    ("train.lr=abc", r"'train.lr' expected a finite number > 0, got 'abc'\. Set e\.g\. train\.lr=1e-3\."),
    ("train.lr=null", r"'train.lr' expected a finite number > 0, got None\."),
    ("train.lr=-1e-3", r"'train.lr' expected a finite number > 0, got -0\.001\."),
    ("train.lr=.nan", r"'train.lr' expected a finite number > 0, got nan\."),
    ("train.optimizer=adamm", r"'train.optimizer' expected one of \['adam', 'adamw', 'sgd'\], got 'adamm'\."),
    ("train.weight_decay=-1", r"'train.weight_decay' expected a finite number >= 0, or null \(the recipes' own, 0\), "
                              r"got -1\. Set e\.g\. train\.weight_decay=0\.01\."),
    ("train.seeds=abc", r"'train.seeds' expected an int in \[0, 2\*\*64\) or a non-empty list of them, got 'abc'\. "
                        r"Set e\.g\. train\.seeds=\[0, 1, 2\]\."),
    ("train.seeds=[]", r"'train.seeds' expected an int in \[0, 2\*\*64\) or a non-empty list of them, got \[\]\."),
    ("train.seeds=[0, 1.5]", r"'train.seeds' expected an int in \[0, 2\*\*64\) or a non-empty list of them, "
                             r"got \[0, 1\.5\]"),
    ("train.seeds=[18446744073709551616]", r"'train.seeds' expected an int in \[0, 2\*\*64\)"),
    ("train.seeds=[1, 1]", r"'train.seeds' expected distinct seeds, got \[1, 1\]\. List each seed once"),
    ("train.device=gpu", r"'train.device' expected a torch device name such as 'cpu', 'cuda' or 'cuda:1', "
                         r"got 'gpu'\. Set train\.device=cpu, train\.device=cuda or train\.device=cuda:N"),
    ("train.precision=fp8", r"'train.precision' expected one of \['fp32', 'bf16', 'fp16'\], got 'fp8'\."),
    ("train.progress=maybe", r"'train.progress' expected True or False, got 'maybe'\."),
    ("data.batch_size=0", r"'data.batch_size' expected an int >= 1 \(training images a step takes\), got 0\. "
                          r"Set e\.g\. data\.batch_size=64\."),
    ("data.num_workers=-1", r"'data.num_workers' expected an int >= 0 \(0: load in the main process\), got -1\."),
    ("data.image_size=0", r"'data.image_size' expected an int >= 1 .*, got 0\. Set e\.g\. data\.image_size=64\."),
    ("train.lr_schedule=exp", r"'train.lr_schedule' expected one of \['constant', 'cosine', 'linear'\], got 'exp'\."),
    ("train.lr_schedule.warmup=-5", r"'train.lr_schedule.warmup' expected an int >= 0, got -5\."),
    ("train.grad_clip=0", r"'train.grad_clip' expected a finite max gradient norm > 0, or null \(no clipping\), "
                          r"got 0\. Set e\.g\. train\.grad_clip=1\.0\."),
    ("train.grad_clip={classifier: 1}", r"'train.grad_clip' expected a finite max gradient norm > 0"),
    ("train.ema=1", r"'train.ema' expected None or a decay in \(0, 1\), got 1\. Pass e\.g\. train\.ema=0\.999"),
    ("data.augment=crops", r"'data.augment' expected one of \['none', 'flip', 'domainbed'\], a dict of Augment "
                           r"settings or an Augment, got 'crops'\. Pick e\.g\. 'domainbed'"),
    ("data.augment.flips=0.5", r"'data.augment.flips' expected one of Augment's settings \['crop_scale', .*\], got "
                               r"the unknown key 'flips'\. Did you mean 'data.augment.flip'\?"),
    ("data.augment.hue=0.9", r"'data.augment.hue' expected a number in \[0, 0.5\] \(0 turns it off\), got 0.9\."),
    ("data.mask_fraction=2", r"'data.mask_fraction' expected a share of the images in \[0, 1\], got 2\."),
    ("data.mask_seed=-1", r"'data.mask_seed' expected an int >= 0, got -1\."),
    ("data.balance=place", r"'data.balance' expected one of \[None, 'class', 'domain', 'domain_class', 'shortcut'\], "
                           r"got 'place'\."),
    ("eval.batch_size=2.5", r"'eval.batch_size' expected an int >= 1, got 2\.5\. Set e\.g\. eval\.batch_size=256\."),
    ("eval.explain_samples=-1", r"'eval.explain_samples' expected an int >= 0 \(0: no saliency metrics\), got -1\."),
    ("eval.ks=[0, 5]", r"'eval.ks' expected a non-empty list of distinct percentages in \(0, 100\], got \[0, 5\]\."),
    ("eval.ks=[5, 5]", r"'eval.ks' expected a non-empty list of distinct percentages in \(0, 100\], got \[5, 5\]\."),
    ("eval.curve_steps=-1", r"'eval.curve_steps' expected an int >= 0 \(RISE deletion/insertion steps per curve; "
                            r"0: not measured\), got -1\."),
    ("eval.sensitivity_samples=-2", r"'eval.sensitivity_samples' expected an int >= 0 \(noisy copies per explained "
                                    r"image for max-sensitivity; 0: not measured\), got -2\."),
    ("eval.sensitivity_radius=0", r"'eval.sensitivity_radius' expected a finite number > 0, got 0\."),
    ("eval.randomization=maybe", r"'eval.randomization' expected True or False, got 'maybe'\."),
    ("eval.background_swap=maybe", r"'eval.background_swap' expected True or False, got 'maybe'\."),
    ("eval.explainer_kwargs=3", r"'eval.explainer_kwargs' expected a mapping of the explainer's arguments, got 3\."),
    ("eval.baseline=grey", r"'eval.baseline' expected one of \['zero', 'black', 'blur', 'mean', 'linear', "
                           r"'noisy_linear'\], got 'grey'\."),
    ("eval.mask_quality=maybe", r"'eval.mask_quality' expected True or False, got 'maybe'\."),
    ("data.allow_missing_classes=maybe", r"'data.allow_missing_classes' expected True or False, got 'maybe'\."),
    ("data.mask_dir=segs", r"'data.mask_dir' expected its default with data.name='synthetic' \(it is read for "
                           r"data.name=csv only\), got 'segs'\. Leave data.mask_dir out, or set data.name=csv\."),
    ("data.allow_missing_classes=true", r"'data.allow_missing_classes' expected its default with "
                                        r"data.name='synthetic' \(it is read for data.name=folder only\)"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[o for o, _ in BAD])
def test_egl_train_names_a_bad_value_and_makes_no_folder(override: str, message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = ["train", "--method", "erm", "--out", str(out), *(x for kv in [*TINY, override] for x in ("--set", kv))]
    assert main(args) == 1
    assert capsys.readouterr().err.startswith(f"egl: error: egl.experiments: '{override.split('=')[0]}'")
    assert not out.exists()
    with pytest.raises(egl.InputError, match=message):
        check_selection(apply_overrides(DEFAULTS, [override]))


@pytest.mark.parametrize("command", ["experiment", "demo"])
@pytest.mark.parametrize("override", ["train.steps=abc", "train.seeds=[]", "train.device=gpu",
                                      "train.progress=maybe", "data.batch_size=0"])
def test_egl_experiment_and_demo_name_a_bad_value_and_make_no_folder(
        command: str, override: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = [command, "--out", str(out), *(x for kv in [*TINY, override] for x in ("--set", kv))]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("egl: error: ") and re.search(dict(BAD)[override], err)
    assert not out.exists()


def test_run_refuses_before_the_results_folder_is_made(tmp_path: Path) -> None:
    out = tmp_path / "run"
    for override in ("train.steps=1.9", "train.lr=-1e-3", "train.precision=fp8", "eval.mask_quality=maybe"):
        cfg = apply_overrides(DEFAULTS, [*TINY, override, f"output={out}"])
        with pytest.raises(egl.InputError, match=dict(BAD)[override]):
            run(cfg, echo=False)
        assert not out.exists()


def test_the_tiny_config_reaches_training_after_the_folder_is_made(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusals above are the checks', not a config that could not train anyway."""
    import egl.experiments.runner as runner

    class Reached(Exception):
        pass

    def train_method(*args: object, **kwargs: object) -> None:
        raise Reached

    monkeypatch.setattr(runner, "train_method", train_method)
    out = tmp_path / "out"
    with pytest.raises(Reached):
        main(["train", "--method", "erm", "--out", str(out), *(x for kv in TINY for x in ("--set", kv))])
    assert out.is_dir()


def _gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """This machine as one with ``n`` CUDA GPUs, whatever it has."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_good_values_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, 2)
    assert check_values(DEFAULTS) is None and check_values(DEMO) is None
    cfg = apply_overrides(DEFAULTS, ["train.seeds=3", "train.lr=1", "train.device=cuda:1", "train.precision=bf16",
                                     "train.progress=false", "data.num_workers=0", "eval.explain_samples=0",
                                     "eval.ks=[0.5, 100]", "eval.baseline=blur", "eval.curve_steps=4",
                                     "eval.sensitivity_samples=3", "eval.sensitivity_radius=0.1", "eval.randomization=true",
                                     "data.mask_fraction=0.5", "eval.mask_quality=false", "eval.background_swap=true"])
    assert check_selection(cfg) == ("last", None)


def test_model_kwargs_timm_does_not_take_are_named() -> None:
    from egl.experiments.models import build_model

    with pytest.raises(egl.InputError, match=r"'model.kwargs' expected keyword arguments that timm's 'test_resnet' "
                                             r"takes, got \{'foo': 1\} \(.*unexpected keyword argument 'foo'\)"):
        build_model({"arch": "test_resnet", "kwargs": {"foo": 1}}, num_classes=3)
    with pytest.raises(egl.InputError, match=r"'model.kwargs' expected a mapping"):
        build_model({"arch": "test_resnet", "kwargs": [1]}, num_classes=3)


def test_the_synthetic_data_refuses_another_image_size(tmp_path: Path) -> None:
    """Its images are drawn at 64 px: another size would be ignored in training and used by egl explain."""
    cfg = apply_overrides(DEFAULTS, ["data.image_size=16"])
    with pytest.raises(egl.InputError, match=r"'data.image_size' expected 64 for the synthetic data .*got 16"):
        check_values(cfg)
    check_values(apply_overrides(DEFAULTS, ["data.image_size=224", "data.name=folder", "data.root=/x"]))


def _cli(command: str, out: Path, *overrides: str) -> list[str]:
    method = ["--method", "erm"] if command == "train" else []
    return [command, *method, "--out", str(out), *(x for kv in [*TINY, *overrides] for x in ("--set", kv))]


DEVICES = [  # GPUs this machine has, train.device, the message
    (0, "cuda", r"'train.device' expected a device this machine has, got 'cuda', but torch finds no CUDA GPU here\. "
                r"Set train\.device=cpu, or run where torch\.cuda\.is_available\(\) is True"),
    (0, "cuda:0", r"got 'cuda:0', but torch finds no CUDA GPU here\."),
    (1, "cuda:1", r"'train.device' expected a device this machine has, got 'cuda:1', but torch finds 1 CUDA GPU here "
                  r"\(cuda:0\)\. Set train\.device=cuda:0 or lower, or train\.device=cpu\."),
    (2, "cuda:2", r"got 'cuda:2', but torch finds 2 CUDA GPUs here \(cuda:0 to cuda:1\)\. Set train\.device=cuda:1"),
]


@pytest.mark.parametrize("gpus,device,message", DEVICES, ids=[f"{d}-with-{n}-gpus" for n, d, _ in DEVICES])
@pytest.mark.parametrize("command", ["train", "experiment"])
def test_a_device_this_machine_lacks_is_named_and_makes_no_folder(
        command: str, gpus: int, device: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``train.device=cuda`` without a GPU failed when the first run moved its model, in a made folder."""
    _gpus(monkeypatch, gpus)
    out = tmp_path / "out"
    assert main(_cli(command, out, f"train.device={device}")) == 1
    err = capsys.readouterr().err
    assert err.startswith("egl: error: egl.experiments: 'train.device'") and re.search(message, err)
    assert not out.exists()


@pytest.mark.parametrize("gpus,device", [(1, "cuda"), (1, "cuda:0"), (2, "cuda:1"), (0, "cpu")])
def test_a_device_this_machine_has_passes(gpus: int, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _gpus(monkeypatch, gpus)
    assert check_values(apply_overrides(DEFAULTS, [f"train.device={device}"])) is None


ARCHS = [
    ("model.arch=test_resnt", r"'model.arch' expected a timm architecture name, got 'test_resnt'\. "
                              r"Did you mean 'test_resnet'.*\? Set e\.g\. model\.arch=resnet18 "
                              r"\(any name in timm\.list_models\(\)\)\."),
    ("model.arch=123", r"'model.arch' expected a timm architecture name, got 123\. Set e\.g\. model\.arch=resnet18"),
    ("model.kwargs=[1]", r"'model.kwargs' expected a mapping of keyword arguments for timm, got \[1\]\."),
]


@pytest.mark.parametrize("override,message", ARCHS, ids=[o for o, _ in ARCHS])
@pytest.mark.parametrize("command", ["train", "experiment", "demo"])
def test_an_unknown_model_arch_is_named_and_makes_no_folder(command: str, override: str, message: str,
                                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A name timm does not know failed when the first run built its model, in a made folder
    (after minutes of other runs' work in a grid whose first methods were fine)."""
    out = tmp_path / "out"
    assert main(_cli(command, out, override)) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"egl: error: egl.experiments: '{override.split('=')[0]}'") and re.search(message, err)
    assert not out.exists()
    with pytest.raises(egl.InputError, match=message):  # without building the data or the model
        check_values(apply_overrides(DEFAULTS, [override]))


@pytest.mark.parametrize("command,overrides,run,images", [
    ("train", ["data.batch_size=17"], "'domain0+domain1'", 16),
    ("experiment", ["data.batch_size=17"], "'all'", 16),
    ("experiment", ["data.batch_size=9", "train.domains=each"], "'domain0' (the smallest)", 8),
])
def test_a_batch_larger_than_a_training_set_is_named_and_makes_no_folder(
        command: str, overrides: list[str], run: str, images: int, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The loader drops the last incomplete batch: a training set smaller than data.batch_size gave
    no batch at all, and fit refused its empty loader once the folder was made and the model built."""
    out = tmp_path / "out"
    assert main(_cli(command, out, *overrides)) == 1
    assert capsys.readouterr().err == (
        "egl: error: egl.experiments: 'data.batch_size' expected at most the number of images in every run's training "
        f"set (the loader drops the last incomplete batch; the training set of run {run} has {images}), got "
        f"{overrides[0].split('=')[1]}. Set data.batch_size={images} or lower, or train on more images "
        "(e.g. data.synthetic.train_per_domain).\n")
    assert not out.exists()


def test_a_batch_as_large_as_the_training_set_reaches_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import egl.experiments.runner as runner

    class Reached(Exception):
        pass

    def train_method(*args: object, **kwargs: object) -> None:
        raise Reached

    monkeypatch.setattr(runner, "train_method", train_method)
    with pytest.raises(Reached):
        main(_cli("train", tmp_path / "out", "data.batch_size=16"))


@pytest.mark.parametrize("command", ["train", "experiment"])
def test_folder_data_checks_image_size_before_reading_it(command: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """Folder data read ``int(data.image_size)`` before the config checks: a raw ValueError."""
    from egl.experiments.sources import load_source

    out = tmp_path / "out"
    assert main(_cli(command, out, "data.name=folder", f"data.root={tmp_path}", "data.image_size=abc")) == 1
    err = capsys.readouterr().err
    assert err.startswith("egl: error: egl.experiments: 'data.image_size' expected an int >= 1 (the side images are "
                          "resized to), got 'abc'. Set e.g. data.image_size=64.")
    assert not out.exists()
    with pytest.raises(egl.InputError, match=r"'data.image_size' expected an int >= 1 .*got 1\.5"):  # (egl eval)
        load_source({"name": "folder", "root": str(tmp_path), "image_size": 1.5})


@pytest.mark.parametrize("section", ["data", "train", "eval", "model", "sweep"])
def test_a_section_that_is_not_a_mapping_is_named(section: str) -> None:
    from egl.experiments.config import check_keys

    cfg = apply_overrides(copy.deepcopy(DEFAULTS), [f"{section}=abc"])
    with pytest.raises(egl.InputError, match=rf"'{section}' expected a mapping of settings \(keys \[.*got 'abc'. "
                                             rf"Set its settings one at a time, e.g. --set {section}\."):
        check_keys(cfg)
