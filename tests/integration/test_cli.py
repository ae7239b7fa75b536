"""The experiment commands end to end, at toy sizes: train, eval, explain, experiment, demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import egl
from egl.cli import main
from egl.experiments.commands import load_model

# toy runs of 2 steps: every warm-up outlasts them (the runner says so; expected here)
pytestmark = pytest.mark.filterwarnings("ignore:egl.experiments. method .* but the run has train.steps")

TINY = ["--set", "train.steps=2", "--set", "data.synthetic.train_per_domain=32", "--set",
        "data.synthetic.val_per_domain=4", "--set", "data.synthetic.test_per_split=20", "--set",
        "eval.explain_samples=8", "--set", "model.arch=test_resnet", "--no-progress"]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_CACHE_DIR", str(tmp_path / "cache"))


def test_train_eval_explain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "erm"
    assert main(["train", "--method", "erm", "--out", str(out), *TINY]) == 0
    model, ckpt = load_model(out / "model.pt")
    assert ckpt["method"] == "erm" and ckpt["num_classes"] == 5 and not model.training
    lines = (out / "train.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["event"] == "start" and len(lines) >= 3
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--split", "flipped"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["split"] == "flipped" and 0 <= row["acc"] <= 1 and "energy" in row and "suff" in row
    import sys

    ev = sys.modules["egl.experiments.evaluate"]  # eval.ks / eval.baseline reach evaluate (they were dropped)

    seen: dict = {}
    real = ev.evaluate
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ev, "evaluate", lambda *a, **k: seen.update(k) or real(*a, **k))
        assert main(["eval", "--checkpoint", str(out / "model.pt"), "--split", "flipped",
                     "--set", "eval.ks=[10, 50]", "--set", "eval.baseline=mean"]) == 0
    assert seen["ks"] == (10, 50) and seen["baseline"] == "mean" and seen["device"] == "cpu"
    assert seen["explainer"] == "grad_cam"
    capsys.readouterr()  # the saliency metrics' explainer: any registered one, a misspelt one named
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--split", "flipped",
                 "--set", "eval.explainer=layer_cam"]) == 0
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert other["acc"] == row["acc"] and other["energy"] != row["energy"]  # same model, other maps
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--set", "eval.explainer=gradcam"]) == 1
    assert "'eval.explainer' expected a registered explainer name" in (err := capsys.readouterr().err)
    assert "Did you mean 'grad_cam'" in err
    capsys.readouterr()  # a device this machine lacks, or a bad eval value, is named (a raw torch error before)
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--set", "train.device=cuda:99"]) == 1
    assert "egl.experiments: 'train.device' expected a device this machine has" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--set", "eval.batch_size=abc"]) == 1
    assert "'eval.batch_size' expected" in capsys.readouterr().err
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(img)
    assert main(["explain", "--checkpoint", str(out / "model.pt"), str(img), "--out", str(tmp_path / "ex")]) == 0
    assert (tmp_path / "ex" / "img_gradcam.png").is_file()
    (tmp_path / "b").mkdir()  # the same stem twice: both overlays kept (one overwrote the other)
    grey16 = tmp_path / "b" / "img.png"  # and a 16-bit grey file, read at its levels (it was clipped white)
    Image.fromarray(np.tile(np.linspace(0, 65535, 50).astype(np.uint16), (40, 1))).save(grey16)
    capsys.readouterr()
    assert main(["explain", "--checkpoint", str(out / "model.pt"), str(img), str(grey16),
                 "--out", str(tmp_path / "ex2")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [Path(r["overlay"]).name for r in rows] == ["img_gradcam.png", "img_gradcam_2.png"]
    assert all(Path(r["overlay"]).is_file() for r in rows)
    assert main(["explain", "--checkpoint", str(out / "model.pt"), str(img), "--out", str(tmp_path / "ex3"),
                 "--explainer", "grad_cam_plus_plus"]) == 0
    assert (tmp_path / "ex3" / "img_grad_cam_plus_plus.png").is_file()
    capsys.readouterr()
    assert main(["explain", "--checkpoint", str(out / "model.pt"), str(img), "--out", str(tmp_path / "ex4"),
                 "--explainer", "nope"]) == 1
    assert "egl explain: 'eval.explainer'" not in (err := capsys.readouterr().err) and "'--explainer'" in err
    assert not (tmp_path / "ex4").exists()
    assert main(["explain", "--checkpoint", str(out / "model.pt"), str(img), "--out", str(tmp_path / "ex5"),
                 "--layer", "layer3", "--explainer-kwargs", "{relu: false}"]) == 0  # another layer, signed maps
    assert (tmp_path / "ex5" / "img_gradcam.png").is_file()
    capsys.readouterr()
    for extra, message in ((["--layer", "layer9"], "'layer'"), (["--explainer-kwargs", "[1, 2]"],
                                                               "'--explainer-kwargs' expected a YAML mapping"),
                           (["--explainer", "input_gradient", "--layer", "layer3"], "'layer' expected 'auto'")):
        assert main(["explain", "--checkpoint", str(out / "model.pt"), str(img), "--out", str(tmp_path / "ex6"),
                     *extra]) == 1
        assert message in capsys.readouterr().err
        assert not (tmp_path / "ex6").exists()
    from egl.experiments.commands import _read_image

    assert 0.45 < float(_read_image(str(grey16), 32).mean()) < 0.55
    # egl sanity: one line per cascade step, a figure, the per-image scores; from files or a split
    capsys.readouterr()
    assert main(["sanity", "--checkpoint", str(out / "model.pt"), "--n", "3", "--split", "flipped",
                 "--out", str(tmp_path / "sanity")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert rows[0]["layer"] == "fc" and rows[0]["order"] == "cascading" and len(rows) == 12
    assert all(-1 <= r["spearman"] <= 1 for r in rows[:-1] if r["spearman"] is not None)
    assert rows[-1]["images"] == 3 and Path(rows[-1]["figure"]).is_file()
    saved = torch.load(tmp_path / "sanity" / "randomization_cascading.pt", weights_only=False)
    assert saved["spearman"].shape == (11, 3) and saved["images"][0] == "flipped[0]"
    capsys.readouterr()
    assert main(["sanity", "--checkpoint", str(out / "model.pt"), str(img), "--order", "independent", "--hog",
                 "--out", str(tmp_path / "sanity2")]) == 0
    hogs = [json.loads(line)["hog"] for line in capsys.readouterr().out.strip().splitlines()[:-1]]
    assert len(hogs) == 11 and all(h is None or -1 <= h <= 1 for h in hogs)
    assert (tmp_path / "sanity2" / "randomization_independent.png").is_file()
    assert main(["sanity", "--checkpoint", str(out / "model.pt"), "--explainer", "gradcam"]) == 1
    assert "egl sanity: '--explainer'" in capsys.readouterr().err
    assert main(["sanity", "--checkpoint", str(out / "model.pt"), "--n", "0"]) == 1
    assert "egl sanity: '--n' expected an int >= 1" in capsys.readouterr().err
    # the data randomisation test: a model trained on permuted labels against the trained one
    permuted = tmp_path / "permuted"
    assert main(["train", "--method", "erm", "--out", str(permuted), *TINY, "--set", "data.permute_labels=0"]) == 0
    capsys.readouterr()
    assert main(["sanity", "--checkpoint", str(permuted / "model.pt"), "--against", str(out / "model.pt"),
                 "--n", "3", "--out", str(tmp_path / "against")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["images"] == 3 and Path(row["figure"]).is_file() and -1 <= row["spearman"] <= 1
    assert (tmp_path / "against" / "permuted_against_erm.pt").is_file()
    from egl.experiments.commands import _run_names

    assert _run_names("runs/permuted/seed0/model.pt", "runs/erm/seed0/model.pt") == ("permuted_seed0", "erm_seed0")
    assert _run_names("a/shuffled.pt", "a/model.pt") == ("shuffled", "a")
    assert main(["sanity", "--checkpoint", str(out / "model.pt"), str(img), "--n", "3"]) == 1
    assert "egl sanity: '--n' expected no --n with image files" in capsys.readouterr().err
    assert Path(row["figure"]).name == "permuted_against_erm.png"
    assert main(["sanity", "--checkpoint", str(permuted / "model.pt"), "--against", str(out / "model.pt"),
                 "--seed", "3"]) == 1  # nothing is re-initialised: a seed would be ignored
    assert "egl sanity: '--seed' expected no --seed with --against" in capsys.readouterr().err
    assert main(["sanity", "--checkpoint", str(out / "model.pt"), "--split", "flippd"]) == 1
    assert "egl sanity: '--split' expected a test split of the checkpoint's data [" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="not that pair"):  # the roles swapped: still computed, warned
        assert main(["sanity", "--checkpoint", str(out / "model.pt"), "--against", str(permuted / "model.pt"),
                     "--n", "2", "--out", str(tmp_path / "swapped")]) == 0
    other = torch.load(permuted / "model.pt", weights_only=False)  # another image size: refused by name
    other["config"]["data"]["image_size"] = 32
    torch.save(other, tmp_path / "other.pt")
    capsys.readouterr()
    assert main(["sanity", "--checkpoint", str(permuted / "model.pt"), "--against", str(tmp_path / "other.pt"),
                 "--n", "2"]) == 1
    assert "egl sanity: '--against' expected a model of --checkpoint's architecture and data (image_size=" in \
        capsys.readouterr().err
    assert main(["sanity", "--checkpoint", str(permuted / "model.pt"), "--against", str(tmp_path / "none.pt")]) == 1
    assert "egl sanity: '--against' expected a model file written by `egl train`" in capsys.readouterr().err
    assert main(["sanity", "--checkpoint", str(out / "model.pt"), "--seed", "-1"]) == 1
    assert "egl sanity: '--seed' expected an int >= 0" in capsys.readouterr().err


def test_experiment_writes_results_tables_and_figure(tmp_path: Path) -> None:
    out = tmp_path / "abl"
    assert main(["experiment", "--preset", "ablation", "--out", str(out), *TINY]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["config"]["methods"].keys() == {
        "align", "align_wo_eg", "align_m_gray"}
    results = rows[1:]
    assert {r["method"] for r in results} == {"align", "align_wo_eg", "align_m_gray"}
    assert {r["explainer"] for r in results} == {"grad_cam"}  # eval.explainer, recorded with each row
    assert {r["split"] for r in results} == {"test_id/domain0", "test_id/domain1", "random", "flipped", "novel"}
    tables = (out / "tables.md").read_text()
    assert "| align_m_gray | all |" in tables and "Shortcut" in tables
    assert "Mask quality" in tables and "| learned (align) |" in tables and "| ground_truth |" in tables
    assert Image.open(out / "case_study.png").size[0] > 100


def test_demo_runs_and_config_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), *TINY]) == 0
    assert "results written to" in capsys.readouterr().out
    assert main(["train", "--method", "nope", *TINY]) == 1
    assert "'--method' expected one of" in capsys.readouterr().err
    assert main(["demo", *TINY, "--out", str(tmp_path / "bad"), "--set", "data.synthetic.bogus=1"]) == 1
    assert "Remove ['bogus']" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_train_takes_a_draw_of_a_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from egl.experiments.config import DEFAULTS, merge
    from egl.experiments.sweep import draw

    sweep = ["--set", "sweep.n=3", "--set", "methods={erm: {recipe: erm, space: {lr: [loguniform, 1e-4, 1e-2]}}}"]
    out = tmp_path / "draw"
    assert main(["train", "--method", "erm@2", "--out", str(out), *TINY, *sweep]) == 0
    header = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    lr = draw({"lr": ["loguniform", 1e-4, 1e-2]}, int(merge(DEFAULTS, {})["sweep"]["seed"]), "erm", 2)["lr"]
    assert header["config"]["lr"] == pytest.approx(lr)  # the draw's hyperparameters, not the configured ones
    assert load_model(out / "model.pt")[1]["method"] == "erm@2"
    capsys.readouterr()
    assert main(["train", "--method", "erm@3", *TINY, *sweep]) == 1
    assert "or a draw <method>@<0..2> of ['erm'] (sweep.n)" in capsys.readouterr().err


def test_local_weights_load_without_download(tmp_path: Path) -> None:
    from egl.experiments.models import build_model

    src = build_model({"arch": "test_resnet", "kwargs": {}}, num_classes=3)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    with pytest.warns(UserWarning, match="shape differs"):
        model = build_model({"arch": "test_resnet", "kwargs": {}, "weights": str(tmp_path / "w.pt")}, num_classes=5)
    assert torch.equal(model.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    with pytest.raises(egl.InputError, match="'model.weights' expected an existing local weights file"):
        build_model({"arch": "test_resnet", "weights": str(tmp_path / "missing.pt")}, num_classes=5)
    with pytest.raises(egl.InputError, match="'model.arch' expected a timm architecture name"):
        build_model({"arch": "resnet9000"}, num_classes=5)


def test_model_normalize_puts_the_weights_normalisation_in_the_model_and_the_checkpoint_keeps_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from egl.experiments.commands import load_model
    from egl.experiments.models import build_model
    from egl.normalization import input_normalization

    torch.save(build_model({"arch": "test_resnet"}, num_classes=3).state_dict(), tmp_path / "w.pt")
    cfg = {"arch": "test_resnet", "weights": str(tmp_path / "w.pt")}
    timm_cfg = build_model({"arch": "test_resnet"}, 3).pretrained_cfg
    mean, std = timm_cfg["mean"], timm_cfg["std"]
    assert input_normalization(build_model(cfg, 3))[1:] == (pytest.approx(mean), pytest.approx(std))  # auto: timm
    assert input_normalization(build_model({"arch": "test_resnet"}, 3)) is None  # auto, random weights: none
    assert input_normalization(build_model({**cfg, "normalize": "none"}, 3)) is None
    assert input_normalization(build_model({"arch": "test_resnet", "normalize": {"mean": [0.5] * 3,
                                                                                "std": [0.25] * 3}}, 3))[1:] == \
        ((0.5,) * 3, (0.25,) * 3)
    out = tmp_path / "run"
    assert main(["train", "--method", "erm", "--out", str(out), *TINY, "--set", "model.normalize=imagenet"]) == 0
    model, _ = load_model(out / "model.pt")
    assert input_normalization(model)[0] == "conv1.0"  # rebuilt with it: not in the state dict
    ckpt = torch.load(out / "model.pt", weights_only=True)  # a file older than model.normalize, with weights:
    ckpt["config"]["model"] = {k: v for k, v in ckpt["config"]["model"].items() if k != "normalize"}
    ckpt["config"]["model"]["weights"] = str(tmp_path / "w.pt")  # trained without normalisation: none
    torch.save(ckpt, tmp_path / "old.pt")
    assert input_normalization(load_model(tmp_path / "old.pt")[0]) is None
    from egl.experiments.resume import config_differences  # and an older results folder does not resume
    assert "model.normalize" in config_differences({"model": {"arch": "test_resnet", "weights": "w.pt"}},
                                                   {"model": {"arch": "test_resnet", "weights": "w.pt",
                                                              "normalize": "auto"}})
    for bad in ("model.normalize=cifar", "model.normalize={mean: [0.5], std: [0]}"):
        assert main(["train", "--method", "erm", "--out", str(tmp_path / "never"), *TINY, "--set", bad]) == 1
        assert "'model.normalize' expected one of ['auto', 'none', 'timm', 'imagenet']" in capsys.readouterr().err
        assert not (tmp_path / "never").exists()


def test_model_weights_and_kwargs_are_checked_before_a_folder_is_made(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing, unreadable or foreign weights file (and an argument the architecture does not take)
    failed when the first run built its model, in a made folder (in a grid, after the runs before it)."""
    from egl.experiments.models import load_weights

    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"head.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    cases = [
        ("model.weights=" + str(tmp_path / "missing.pt"),
         "'model.weights' expected an existing local weights file, got '{}'. Download the weights once, by hand, and "
         "set model.weights to the file's path (or model.weights=null for random weights).".format(
             tmp_path / "missing.pt")),
        ("model.weights=" + str(tmp_path / "junk.pt"),
         "'model.weights' expected a weights file torch.load reads (weights_only=True: tensors, no pickled objects), "
         f"got '{tmp_path / 'junk.pt'}', which it could not read (UnpicklingError"),
        ("model.weights=" + str(tmp_path / "list.pt"),
         "'model.weights' expected a state_dict (name -> tensor), got list"),
        ("model.weights=" + str(tmp_path / "other.pt"),
         "'model.weights' expected weights for ResNet, got 1 unexpected keys (e.g. ['head.weight'])"),
        ("model.weights=3", "'model.weights' expected a path to a local weights file, or null, got int 3."),
        ("model.kwargs={foo: 1}", "'model.kwargs' expected keyword arguments that timm's 'test_resnet' takes, got "
                                  "{'foo': 1}"),
    ]
    for override, message in cases:
        for command in (["train", "--method", "erm"], ["experiment"]):
            out = tmp_path / "never"
            assert main([*command, "--out", str(out), *TINY, "--set", override]) == 1
            err = capsys.readouterr().err
            assert err.startswith("egl: error: egl.experiments") and message in err, (override, err)
            assert not out.exists()
    with pytest.raises(egl.InputError, match=r"load_weights: 'path' expected a weights file torch.load reads"):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "junk.pt")


def test_ablation_preset_gains_m_sam_with_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from _helpers import tiny_sam

    from egl.experiments.commands import _preset

    assert "align_m_sam" not in _preset("ablation")["methods"]
    tiny_sam().save_pretrained(tmp_path / "sam")
    monkeypatch.setenv("EGL_SAM_WEIGHTS", str(tmp_path / "sam"))
    methods = _preset("ablation")["methods"]
    assert methods["align_m_sam"]["kwargs"]["masker"] == "sam"
    masker = egl.create("masker", "sam")  # loads the local folder named by EGL_SAM_WEIGHTS, no download
    out = masker(torch.rand(1, 3, 32, 32))
    assert out.shape == (1, 1, 32, 32)


def test_alignment_preset_lists_the_three_losses() -> None:
    from egl.experiments.commands import _preset

    methods = _preset("alignment")["methods"]
    assert {m["kwargs"]["alignment"] for n, m in methods.items() if n != "erm"} == {"bce", "energy_outside", "rrr"}
    for name in methods:
        egl.get_component("recipe", methods[name]["recipe"])


def test_groups_preset_runs_masks_against_group_labels(tmp_path: Path) -> None:
    out = tmp_path / "groups"
    assert main(["experiment", "--preset", "groups", "--out", str(out), *TINY, "--set", "eval.explain_samples=0",
                 "--set", "eval.mask_quality=false"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    methods = {"erm", "align_gt", "group_dro_adj", "group_dro_adamw"}
    assert rows[0]["config"]["methods"].keys() == methods and {r["method"] for r in rows[1:]} == methods


def test_invariance_preset_runs_the_domain_penalties_on_pooled_domains(tmp_path: Path) -> None:
    out = tmp_path / "invariance"
    with pytest.warns(UserWarning, match="anneal_steps=50 but the run has train.steps=2"):
        assert main(["experiment", "--preset", "invariance", "--out", str(out), *TINY, "--set",
                     "eval.explain_samples=0", "--set", "eval.mask_quality=false"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    methods = {"erm", "irm", "vrex", "coral", "mmd", "sd"}
    assert rows[0]["config"]["methods"].keys() == methods and {r["method"] for r in rows[1:]} == methods
    assert {r["train"] for r in rows[1:]} == {"all"}


def test_an_experiment_trains_on_a_frozen_maskers_masks_under_augmentation(tmp_path: Path) -> None:
    out = tmp_path / "gray"
    methods = '{align_gray: {recipe: align, kwargs: {masker: ground_truth, warmup_steps: 0}}}'
    assert main(["experiment", "--out", str(out), *TINY, "--set", "data.masks_from=grayscale", "--set",
                 "data.augment=domainbed", "--set", f"methods={methods}", "--set", "eval.mask_quality=false"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rows[0]["config"]["data"]["masks_from"] == "grayscale" and {r["method"] for r in rows[1:]} == {"align_gray"}
    log = [json.loads(line) for line in (out / "train" / "align_gray-all-s0.jsonl").read_text().splitlines()]
    assert any("classifier/align" in row for row in log)  # aligned to the grayscale masks


def test_eval_of_a_model_trained_on_a_maskers_masks_makes_no_training_masks(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.data import MaskedBy

    out = tmp_path / "gray"
    methods = '{align_gray: {recipe: align, kwargs: {masker: ground_truth, warmup_steps: 0}}}'
    assert main(["train", "--method", "align_gray", "--out", str(out), *TINY, "--set", "data.masks_from=grayscale",
                 "--set", f"methods={methods}"]) == 0

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("egl eval built training masks")

    monkeypatch.setattr(MaskedBy, "__init__", refuse)
    assert main(["eval", "--checkpoint", str(out / "model.pt"), "--split", "flipped"]) == 0


def test_a_plugin_module_registers_for_one_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "smooth_plugin.py").write_text(
        "import torch.nn.functional as F\nimport egl\nfrom egl.recipes import Phase, Recipe\n\n\n"
        "class LabelSmoothing(Recipe):\n    \"\"\"ERM with label smoothing.\"\"\"\n\n    name = 'label_smoothing'\n\n"
        "    def __init__(self, model, *, smoothing=0.1, lr=5e-5, weight_decay=0.0, optimizer='adam'):\n"
        "        super().__init__(model, lr=lr, weight_decay=weight_decay, optimizer=optimizer)\n"
        "        self.smoothing = smoothing\n\n    def phases(self):\n"
        "        return [Phase('classifier', (self.model,), self._terms)]\n\n    def _terms(self, batch, step):\n"
        "        ce = F.cross_entropy(self.model(batch.x), batch.y, label_smoothing=self.smoothing)\n"
        "        return {'ce': ce, 'total': ce}\n\n\n@egl.hookimpl\ndef egl_register_recipes():\n"
        "    return [LabelSmoothing]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    try:
        assert main(["-p", "smooth_plugin", "train", "--method", "ls", "--out", str(out), *TINY,
                     "--set", "methods={ls: {recipe: label_smoothing, kwargs: {smoothing: 0.2}}}"]) == 0
    finally:
        egl.reset_plugins()
    assert (out / "model.pt").is_file()
    capsys.readouterr()
    assert main(["-p", "no_such_plugin", "list"]) == 1
    assert "egl: '--plugin' expected an importable module" in capsys.readouterr().err
