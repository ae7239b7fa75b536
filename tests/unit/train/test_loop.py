"""fit: the log's header and rows, TensorBoard scalars, argument checks."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.train import MissingDependencyError


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3]))]


def test_log_header_records_versions_and_the_readable_config(tmp_path: Path) -> None:
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=1, align_weight=0.2)
    log = tmp_path / "run" / "log.jsonl"
    recipe.fit(_batches(), 2, seed=3, progress=False, log_path=log)
    header, *rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert header["event"] == "start" and header["recipe"] == "align" and header["seed"] == 3
    assert set(header["versions"]) >= {"egl", "torch", "timm", "python"}
    cfg = header["config"]
    assert cfg["model"] == "ResNet(test_resnet)" and cfg["align_weight"] == 0.2 and cfg["warmup_steps"] == 1
    assert cfg["masker"] == "learned" and cfg["lr"] == 5e-5  # defaults are recorded too
    assert [r["step"] for r in rows] == [0, 1] and "masker/total" in rows[1]


def test_a_resumed_run_appends_a_resume_header(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    kwargs = dict(progress=False, log_path=log, checkpoint_dir=tmp_path / "ckpt", resume=True)
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 1, seed=0, **kwargs)
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 3, seed=0, **kwargs)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [e.get("event", e.get("step")) for e in events] == ["start", 0, "resume", 1, 2]
    assert events[2]["start_step"] == 1


def test_checkpoints_sum_the_training_seconds_of_the_calls_that_resumed_them(tmp_path: Path) -> None:
    from egl.train import load_checkpoint, save_checkpoint

    kwargs = dict(progress=False, checkpoint_dir=tmp_path / "ckpt", resume=True)
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 1, seed=0, **kwargs)
    path = tmp_path / "ckpt" / "last.pt"
    first = load_checkpoint(path)["train_seconds"]
    assert 0 < first < 60
    state = load_checkpoint(path)
    state["train_seconds"] = 1000.0  # as if the first call had trained for a long time
    save_checkpoint(state, path)
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 2, seed=0, **kwargs)
    assert 1000 < load_checkpoint(path)["train_seconds"] < 1060  # the earlier calls' time, plus this one's
    del state["train_seconds"]  # a checkpoint of an older egl version: counts from the restart
    save_checkpoint(state, path)
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 2, seed=0, **kwargs)
    assert 0 < load_checkpoint(path)["train_seconds"] < 60


def test_resuming_in_another_precision_or_layout_warns(tmp_path: Path) -> None:
    import warnings

    kwargs = dict(progress=False, checkpoint_dir=tmp_path / "ckpt", resume=True)
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 1, seed=0, precision="bf16", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same numerics: no warning
        recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 2, seed=0, precision="bf16", **kwargs)
    with pytest.warns(UserWarning, match=r"was trained with precision='bf16', channels_last=False; this run has "
                                         r"precision='fp32', channels_last=True\. Training goes on, but not as the "
                                         r"interrupted run would have \(not bit-exact\); pass precision='bf16', "
                                         r"channels_last=False to continue it as it was"):
        recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 3, seed=0, channels_last=True,
                                                                    **kwargs)


def test_tensorboard_missing_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    before = {k: v.clone() for k, v in recipe.state_dict().items()}
    with pytest.raises(MissingDependencyError, match="pip install tensorboard") as info:
        recipe.fit(_batches(), 1, progress=False, tensorboard_dir=tmp_path)
    assert isinstance(info.value, ImportError) and isinstance(info.value, egl.EGLError)
    assert all(torch.equal(before[k], v) for k, v in recipe.state_dict().items())  # raised before training


def test_tensorboard_gets_every_term_as_a_scalar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            calls.append(("init", log_dir))

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            calls.append((tag, step))

        def close(self) -> None:
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 2, progress=False,
                                                                 tensorboard_dir=tmp_path)
    assert calls == [("init", str(tmp_path)), ("classifier/ce", 0), ("classifier/total", 0),
                     ("classifier/ce", 1), ("classifier/total", 1), ("close",)]


def test_tensorboard_event_files_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 2, progress=False,
                                                                 tensorboard_dir=tmp_path)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("classifier/ce")] == [0, 1]


def test_steps_must_be_a_non_negative_int() -> None:
    recipe = recipes.erm(make_model("test_resnet"))
    with pytest.raises(egl.InputError, match="'steps' expected an int >= 0, got 2.5"):
        recipe.fit(_batches(), 2.5, progress=False)


def test_bf16_autocast_and_channels_last_train_on_cpu() -> None:
    import math

    from _helpers import make_model

    from egl import recipes

    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 3, 64, 64, generator=g), torch.tensor([0, 1, 2, 0]))
    base = recipes.align(make_model("test_resnet", eval_mode=False, output_stride=16), warmup_steps=0)
    ref = base.fit([batch], 2, seed=0, progress=False)
    cl = recipes.align(make_model("test_resnet", eval_mode=False, output_stride=16), warmup_steps=0)
    got = cl.fit([batch], 2, seed=0, progress=False, channels_last=True)
    for a, b in zip(ref, got):  # the same maths in another memory layout
        for k in a:
            assert math.isclose(a[k], b[k], rel_tol=1e-3, abs_tol=1e-4), (k, a[k], b[k])
    half = recipes.align(make_model("test_resnet", eval_mode=False, output_stride=16), warmup_steps=0)
    logs = half.fit([batch], 2, seed=0, progress=False, precision="bf16")
    assert all(math.isfinite(v) for row in logs for v in row.values())
    assert abs(logs[0]["classifier/ce"] - ref[0]["classifier/ce"]) < 0.1  # bf16 rounding, same loss


def test_precision_is_checked() -> None:
    from _helpers import make_model

    from egl import recipes
    from egl.errors import InputError

    recipe = recipes.erm(make_model("test_resnet"))
    with pytest.raises(InputError, match=r"'precision' expected 'fp32', 'bf16' or 'fp16', got 'half'\. Use "
                                         r"precision='bf16' for mixed precision \('fp16' on GPUs without bfloat16\)"):
        recipe.fit([(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))], 1, progress=False, precision="half")


def test_channels_last_auto_means_mixed_precision_on_cuda() -> None:
    from egl.train.loop import resolve_channels_last

    assert resolve_channels_last("auto", "cuda:1", "bf16") and resolve_channels_last("auto", torch.device("cuda"), "fp16")
    assert not resolve_channels_last("auto", "cuda", "fp32") and not resolve_channels_last("auto", "cpu", "bf16")
    assert resolve_channels_last(True, "cpu", "fp32") and not resolve_channels_last(False, "cuda", "bf16")


def test_channels_last_auto_keeps_the_cpu_layout_and_bad_values_are_named() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    batch = (torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    recipe.fit([batch], 1, progress=False, precision="bf16")  # "auto" on the CPU: NCHW kept
    conv = next(m for m in recipe.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
    for bad in ("yes", 1, 0):  # (1 == True and 0 == False: a number is not read as a switch)
        with pytest.raises(egl.InputError, match=rf"'channels_last' expected True, False or 'auto', got {bad!r}"):
            recipe.fit([batch], 1, progress=False, channels_last=bad)


def test_fit_puts_every_module_back_in_its_mode() -> None:
    recipe = recipes.erm(make_model("test_resnet"))  # eval mode
    bn = next(m for m in recipe.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.train()  # mixed modes are kept too
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    recipe.fit([(x, y)], 1, progress=False)
    assert not recipe.model.training and bn.training
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(recipes.NonFiniteLossError):
        recipe.fit([(nan, y)], 1, progress=False)
    assert not recipe.model.training and bn.training


def test_optimizers_must_cover_every_phase_before_step_zero() -> None:
    """ALIGN's masker phase starts after warm-up: a dict without it failed with a KeyError
    deep in training_step at step warmup_steps, after that many steps had trained."""
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=1)
    before = {k: v.clone() for k, v in recipe.state_dict().items()}
    only = {"classifier": torch.optim.SGD(recipe.phase_parameters("classifier"), lr=0.1)}
    with pytest.raises(egl.InputError, match=r"'optimizers' expected one optimiser per phase of align: "
                       r"keys \['classifier', 'masker'\], got keys \['classifier'\]"):
        recipe.fit(_batches() * 2, 2, progress=False, optimizers=only)
    assert all(torch.equal(before[k], v) for k, v in recipe.state_dict().items())  # nothing trained
    with pytest.raises(egl.InputError, match=r"'optimizers' expected torch.optim.Optimizer values"):
        recipe.fit(_batches(), 1, progress=False, optimizers={"classifier": only["classifier"], "masker": 0.1})
    with pytest.raises(egl.InputError, match=r"'optimizers' expected a dict"):
        recipe.fit(_batches(), 1, progress=False, optimizers=[only["classifier"]])
    swapped = recipe.configure_optimizers()  # each phase's optimiser holding the other's parameters
    with pytest.raises(egl.InputError, match=r"'optimizers' expected the 'masker' optimiser over parameters of "
                                             r"that phase's modules \(LearnedMasker\), got one holding none of them"):
        recipe.fit(_batches(), 1, progress=False,
                   optimizers={"classifier": swapped["masker"], "masker": swapped["classifier"]})
    opts = recipe.configure_optimizers()
    assert len(recipe.fit(_batches(), 1, progress=False, optimizers=opts)) == 1


def test_fit_names_a_model_a_missing_loader_and_a_seed_that_is_not_an_int() -> None:
    from egl.train import fit

    model = make_model("test_resnet", eval_mode=False)
    with pytest.raises(egl.InputError, match=r"'recipe' expected an egl recipe, got a ResNet.*egl.recipes.erm\(model\)"):
        fit(model, _batches(), 1)
    recipe = recipes.erm(model)
    with pytest.raises(egl.InputError, match=r"'loader' expected an iterable of batches .*got NoneType"):
        recipe.fit(None, 1, progress=False)
    for seed in ("0", 1.5, True):
        with pytest.raises(egl.InputError, match=r"'seed' expected an int or None"):
            recipe.fit(_batches(), 1, seed=seed, progress=False)
    import numpy as np

    for seed in (np.int64(3), -1):  # a NumPy int (converted) and a negative seed (seed_everything takes it)
        assert len(recipe.fit(_batches(), 1, seed=seed, progress=False)) == 1


def _unchanged(recipe: recipes.Recipe, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in recipe.state_dict().items())


def test_progress_and_resume_must_be_bools(tmp_path: Path) -> None:
    """progress="no" showed the bar and resume="no" resumed: a string or a number read as a switch."""
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    for arg, bad in (("progress", "no"), ("resume", "no"), ("resume", 1)):
        kwargs = {"progress": False, "checkpoint_dir": tmp_path, arg: bad}
        with pytest.raises(egl.InputError, match=rf"fit: '{arg}' expected True or False, got {bad!r}\."):
            recipe.fit(_batches(), 1, **kwargs)


def test_unusable_paths_are_named_before_anything_is_trained(tmp_path: Path) -> None:
    """A checkpoint_dir that is a file, or holds a folder named last.pt, raised a raw OSError at the
    first save, checkpoint_every steps into the run; log and TensorBoard paths raised raw OSError or
    TypeError (an int), and "" meant the current folder."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "ckpt" / "last.pt").mkdir(parents=True)
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    before = {k: v.clone() for k, v in recipe.state_dict().items()}
    cases = [
        ({"checkpoint_dir": tmp_path / "afile"}, r"'checkpoint_dir' expected a folder that can be created and "
                                                 r"written, got '.*afile' \(FileExistsError"),
        ({"checkpoint_dir": tmp_path / "ckpt"}, r"'checkpoint_dir' expected a writable folder where 'last.pt' can be "
                                                r"written, got '.*last.pt', not a file"),
        ({"checkpoint_dir": 5}, r"'checkpoint_dir' expected a path \(a non-empty str or pathlib.Path\), got int 5"),
        ({"log_path": tmp_path}, r"'log_path' expected a JSONL file to append to, got '.*', a directory"),
        ({"log_path": tmp_path / "afile" / "log.jsonl"}, r"'log_path' expected a file that can be created and "
                                                         r"appended to, got '.*afile/log.jsonl' \("),
        ({"log_path": ""}, r"'log_path' expected a path \(a non-empty str or pathlib.Path\), got str ''"),
        ({"tensorboard_dir": 3}, r"'tensorboard_dir' expected a path"),
    ]
    for kwargs, msg in cases:
        with pytest.raises(egl.InputError, match=r"egl.train.fit: " + msg):
            recipe.fit(_batches(), 2, progress=False, checkpoint_every=1, **kwargs)
        assert _unchanged(recipe, before), kwargs


def test_a_tensorboard_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(egl.InputError, match=r"fit: 'tensorboard_dir' expected a folder that can be created and "
                                             r"written, got '.*afile' \(FileExistsError"):
        recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_batches(), 1, progress=False,
                                                                     tensorboard_dir=tmp_path / "afile")


def test_a_device_torch_cannot_read_or_this_machine_lacks_is_named() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match=r"fit: 'device' expected a torch device name such as 'cpu', 'cuda' or "
                                             r"'cuda:1', got 'gpu'. Pass device='cpu', device='cuda' or "
                                             r"device='cuda:N'"):
        recipe.fit(_batches(), 1, progress=False, device="gpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(egl.InputError, match=rf"'device' expected a device this machine has, got 'cuda:{count}', "
                                             r"but torch finds (no CUDA GPU|\d+ CUDA GPUs?) here"):
        recipe.fit(_batches(), 1, progress=False, device=f"cuda:{count}")
    with pytest.raises(egl.InputError, match=r"fit: 'device' expected a device that computes, got 'meta': its "
                                             r"tensors hold shapes, no values. Pass device='cpu' or device='cuda'"):
        recipe.fit(_batches(), 1, progress=False, device="meta")
    assert len(recipe.fit(_batches(), 1, progress=False, device=torch.device("cpu"))) == 1


def test_a_seed_torch_cannot_take_is_named() -> None:
    """2**70 was a raw ValueError from torch.manual_seed; seed_everything took True and crashed on
    a str or a float inside random or NumPy."""
    from egl.train import seed_everything

    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match=r"fit: 'seed' expected an int or None \(an int in \[-2\*\*63, 2\*\*64 - "
                                             r"1\], what torch.manual_seed takes\), got 1180591620717411303424"):
        recipe.fit(_batches(), 1, progress=False, seed=2**70)
    for bad in ("0", 0.5, None, True, 2**64):
        with pytest.raises(egl.InputError, match=r"seed_everything: 'seed' expected an int \(an int in"):
            seed_everything(bad)  # type: ignore[arg-type]
    seed_everything(2**64 - 1)
    seed_everything(-2**63)


def test_numpy_bools_are_switches() -> None:
    import numpy as np

    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    assert len(recipe.fit(_batches(), 1, progress=np.False_, resume=np.False_)) == 1


def test_a_bad_argument_leaves_no_checkpoint_dir_behind(tmp_path) -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match="'optimizers'"):
        recipe.fit(_batches(), 1, progress=False, checkpoint_dir=tmp_path / "ck", optimizers={"nope": None})
    assert not (tmp_path / "ck").exists()
