"""egl.experiments.config.check_values: a bad value is named before any folder is made or step is run.

``--set train.steps=abc`` was a raw ``int()`` traceback from inside a run, ``train.steps=1.9``
trained one step, ``train.progress=maybe`` was read as True, ``train.seeds=[]`` an IndexError, and
each left an empty ``--out`` folder behind.
"""

from __future__ import annotations

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
    ("train.seeds=abc", r"'train.seeds' expected an int >= 0 or a non-empty list of them, got 'abc'\. "
                        r"Set e\.g\. train\.seeds=\[0, 1, 2\]\."),
    ("train.seeds=[]", r"'train.seeds' expected an int >= 0 or a non-empty list of them, got \[\]\."),
    ("train.seeds=[0, 1.5]", r"'train.seeds' expected an int >= 0 or a non-empty list of them, got \[0, 1\.5\]"),
    ("train.seeds=[1, 1]", r"'train.seeds' expected distinct seeds, got \[1, 1\]\. List each seed once"),
    ("train.device=gpu", r"'train.device' expected a torch device name such as 'cpu', 'cuda' or 'cuda:1', "
                         r"got 'gpu'\. Set train\.device=cpu, cuda or cuda:N"),
    ("train.precision=fp8", r"'train.precision' expected one of \['fp32', 'bf16', 'fp16'\], got 'fp8'\."),
    ("train.progress=maybe", r"'train.progress' expected True or False, got 'maybe'\."),
    ("data.batch_size=0", r"'data.batch_size' expected an int >= 1 \(training images a step takes\), got 0\. "
                          r"Set e\.g\. data\.batch_size=64\."),
    ("data.num_workers=-1", r"'data.num_workers' expected an int >= 0 \(0: load in the main process\), got -1\."),
    ("data.image_size=0", r"'data.image_size' expected an int >= 1 .*, got 0\. Set e\.g\. data\.image_size=64\."),
    ("eval.batch_size=2.5", r"'eval.batch_size' expected an int >= 1, got 2\.5\. Set e\.g\. eval\.batch_size=256\."),
    ("eval.explain_samples=-1", r"'eval.explain_samples' expected an int >= 0 \(0: no saliency metrics\), got -1\."),
    ("eval.ks=[0, 5]", r"'eval.ks' expected a non-empty list of distinct percentages in \(0, 100\], got \[0, 5\]\."),
    ("eval.ks=[5, 5]", r"'eval.ks' expected a non-empty list of distinct percentages in \(0, 100\], got \[5, 5\]\."),
    ("eval.baseline=black", r"'eval.baseline' expected one of \['zero', 'blur', 'mean'\], got 'black'\."),
    ("eval.mask_quality=maybe", r"'eval.mask_quality' expected True or False, got 'maybe'\."),
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


def test_good_values_pass() -> None:
    assert check_values(DEFAULTS) is None and check_values(DEMO) is None
    cfg = apply_overrides(DEFAULTS, ["train.seeds=3", "train.lr=1", "train.device=cuda:1", "train.precision=bf16",
                                     "train.progress=false", "data.num_workers=0", "eval.explain_samples=0",
                                     "eval.ks=[0.5, 100]", "eval.baseline=blur", "eval.mask_quality=false"])
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
