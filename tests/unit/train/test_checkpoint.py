"""Checkpoints: atomic writes, RNG round trips, data-order replay, bit-exact resume."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import make_model
from torch.utils.data import DataLoader, TensorDataset

import egl
from egl import recipes
from egl.recipes import NonFiniteLossError
from egl.train import DataStream, load_checkpoint, save_checkpoint
from egl.train.checkpoint import get_rng_state, set_rng_state

# 10 samples in batches of 4: epochs of 3 batches (4, 4, 2). Killing after 5 steps lands
# mid-epoch (epoch 1, batch 2), after ALIGN's 3 warm-up steps.
N_SAMPLES, BATCH, WARMUP, KILL, STEPS = 10, 4, 3, 5, 8


def _dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N_SAMPLES, 3, 32, 32, generator=g), torch.arange(N_SAMPLES) % 5)


def _loader(kind: str) -> DataLoader:
    generator = torch.Generator().manual_seed(7) if kind == "own_generator" else None
    return DataLoader(_dataset(), batch_size=BATCH, shuffle=True, generator=generator)


def _align_run(steps: int, loader_kind: str = "global_rng", **kwargs) -> tuple[recipes.ALIGN, list]:
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=WARMUP)
    logs = recipe.fit(_loader(loader_kind), steps, seed=0, progress=False, **kwargs)
    return recipe, logs


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- atomic writes ---------------------------------------------------------------------------
def test_save_is_atomic_when_the_write_fails_midway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)
    real_save = torch.save

    def torn_save(obj, f, *args, **kwargs):  # half a checkpoint reaches the disk, then the disk is full
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(17)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 1 and torch.equal(ckpt["w"], torch.arange(4.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_a_failed_save_during_fit_keeps_the_previous_checkpoint(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    real_save, calls = torch.save, []

    def failing_second_save(obj, f, *args, **kwargs):
        calls.append(obj["step"])
        if len(calls) == 2:
            f.write(b"PK\x03\x04 partial")
            raise OSError("killed while writing")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_second_save)
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(OSError, match="killed while writing"):
        recipe.fit(_loader("global_rng"), 4, seed=0, progress=False, checkpoint_dir=tmp_path, checkpoint_every=2)
    monkeypatch.undo()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert calls == [2, 4] and ckpt["step"] == 2
    fresh = recipes.erm(make_model("test_resnet", eval_mode=False))
    fresh.load_state_dict(ckpt["recipe"])  # whole and loadable


def test_load_checkpoint_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(egl.InputError, match="'path' expected an existing checkpoint file"):
        load_checkpoint(tmp_path / "nope.pt")


# -- RNG and data order ------------------------------------------------------------------------
def test_rng_state_round_trip_covers_python_numpy_torch_and_generators() -> None:
    g = torch.Generator().manual_seed(3)
    state = get_rng_state(None, [g])

    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(())), float(torch.rand((), generator=g))

    first = draw()
    set_rng_state(state, None, [g])
    assert draw() == first


def test_data_stream_replays_the_order_mid_epoch() -> None:
    def batches(stream: DataStream, n: int) -> list[list[float]]:
        out = []
        for _ in range(n):
            out.append(next(stream)[1].tolist())
            torch.rand(3)  # a training step draws from the same RNG (dropout, mixup...)
        return out

    torch.manual_seed(0)
    full = batches(DataStream(_loader("global_rng")), 8)
    torch.manual_seed(0)
    first = DataStream(_loader("global_rng"))
    head = batches(first, 4)
    saved, rng = first.state_dict(), get_rng_state()
    assert (saved["epoch"], saved["batch"]) == (1, 1)
    torch.manual_seed(123)  # a new process: the RNG is anywhere
    second = DataStream(_loader("global_rng"))
    second.load_state_dict(saved)
    set_rng_state(rng)
    assert head + batches(second, 4) == full
    assert full[:3] != full[3:6]  # epochs are really shuffled differently


class _Augmented(torch.utils.data.Dataset):
    """Index plus a random jitter drawn in the worker: replaying needs the workers' seeds too."""

    def __len__(self) -> int:
        return N_SAMPLES

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor(float(i)) + torch.rand(()) * 1e-3


def test_data_stream_replays_workers_and_their_random_augmentations() -> None:
    def loader() -> DataLoader:
        return DataLoader(_Augmented(), batch_size=BATCH, shuffle=True, num_workers=2)

    def take(stream: DataStream, n: int) -> list[list[float]]:
        out = []
        for _ in range(n):
            out.append(next(stream).tolist())
            torch.rand(3)  # the training step's own draws
        return out

    torch.manual_seed(0)
    full = take(DataStream(loader()), 6)
    torch.manual_seed(0)
    first = DataStream(loader())
    head, saved, rng = take(first, 4), first.state_dict(), get_rng_state()
    second = DataStream(loader())
    second.load_state_dict(saved)
    set_rng_state(rng)
    assert head + take(second, 2) == full


def test_data_stream_calls_set_epoch_and_rejects_empty_loaders() -> None:
    class Sampler(torch.utils.data.Sampler):
        def __init__(self) -> None:
            self.epochs: list[int] = []

        def set_epoch(self, epoch: int) -> None:
            self.epochs.append(epoch)

        def __iter__(self):
            return iter(range(4))

        def __len__(self) -> int:
            return 4

    sampler = Sampler()
    stream = DataStream(DataLoader(_dataset(), batch_size=2, sampler=sampler))
    for _ in range(5):
        next(stream)
    assert sampler.epochs == [0, 1, 2]
    with pytest.raises(egl.InputError, match="an empty loader"):
        next(DataStream([]))
    for bad in (None, 3):  # (a TypeError at the first batch before)
        with pytest.raises(egl.InputError, match=r"'loader' expected an iterable of batches .*, "
                                                 r"got (NoneType None|int 3)"):
            DataStream(bad)  # type: ignore[arg-type]

    class Batches:  # a sequence by __getitem__ alone, as iter() takes it
        def __getitem__(self, i: int) -> int:
            if i >= 2:
                raise IndexError(i)
            return i

    stream = DataStream(Batches())
    assert [next(stream) for _ in range(3)] == [0, 1, 0]  # two batches an epoch


# -- resume ----------------------------------------------------------------------------------
@pytest.mark.parametrize("loader_kind", ["global_rng", "own_generator"])
def test_resume_is_bit_exact_for_align_killed_mid_epoch(tmp_path: Path, loader_kind: str) -> None:
    reference, ref_logs = _align_run(STEPS, loader_kind)
    _, head = _align_run(KILL, loader_kind, checkpoint_dir=tmp_path, checkpoint_every=2)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["step"] == KILL and ckpt["ranks"][0]["data"]["batch"] == 2  # saved at the end: mid-epoch
    assert set(ckpt["optimizers"]) == {"masker", "classifier"} and ckpt["optimizers"]["masker"]["state"]
    resumed, tail = _align_run(STEPS, loader_kind, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
    assert [row["step"] for row in tail] == list(range(KILL, STEPS))
    assert head + tail == ref_logs  # every logged term, bit for bit
    assert _same_state(reference, resumed)  # classifier, masker, BatchNorm statistics
    assert load_checkpoint(tmp_path / "last.pt")["step"] == STEPS


def test_non_finite_loss_stops_and_the_last_good_checkpoint_survives(tmp_path: Path) -> None:
    x, y = _dataset().tensors
    good = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[:4], y[:4])]
    bad_x = x[4:8].clone()
    bad_x[0, 0, 0, 0] = float("nan")
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=1)
    log = tmp_path / "log.jsonl"
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        recipe.fit(good + [(bad_x, y[4:8])], 5, seed=0, progress=False, checkpoint_dir=tmp_path / "ckpt",
                   checkpoint_every=1, log_path=log)
    ckpt = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert ckpt["step"] == 3
    assert '"event": "error"' in log.read_text().splitlines()[-1]
    # The checkpoint is the state after 3 good steps, and training goes on from it.
    clean = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=1)
    clean.fit(good, 3, seed=0, progress=False)
    restored = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=1)
    restored.load_state_dict(ckpt["recipe"])
    assert _same_state(clean, restored)
    logs = restored.fit(good, 5, progress=False, checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert [row["step"] for row in logs] == [3, 4]


def test_resume_without_a_checkpoint_starts_afresh(tmp_path: Path) -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    logs = recipe.fit(_loader("global_rng"), 2, seed=0, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert [row["step"] for row in logs] == [0, 1] and (tmp_path / "last.pt").is_file()
    with pytest.warns(UserWarning, match=r"is at step 2, and steps=2: nothing is trained"):
        assert recipe.fit(_loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path, resume=True) == []


def test_resume_checks_its_arguments_and_the_checkpoint(tmp_path: Path) -> None:
    erm = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match="'checkpoint_dir' expected a directory when resume=True"):
        erm.fit(_loader("global_rng"), 1, progress=False, resume=True)
    with pytest.raises(egl.InputError, match="'checkpoint_every' expected an int >= 1"):
        erm.fit(_loader("global_rng"), 1, progress=False, checkpoint_dir=tmp_path, checkpoint_every=0)
    erm.fit(_loader("global_rng"), 1, progress=False, checkpoint_dir=tmp_path)
    align = recipes.align(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match="a checkpoint of a 'align' recipe"):
        align.fit(_loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path, resume=True)


def test_a_checkpoint_of_another_model_is_refused_before_anything_is_loaded(tmp_path: Path) -> None:
    """torch's load_state_dict raised half-way: 90 of 92 tensors were already overwritten."""
    recipes.erm(make_model("test_resnet", eval_mode=False)).fit(_loader("global_rng"), 1, progress=False,
                                                               checkpoint_dir=tmp_path)
    other_model = make_model("test_resnet", eval_mode=False)
    other_model.reset_classifier(7)
    other = recipes.erm(other_model)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(egl.InputError, match=r"'resume' expected a checkpoint of this recipe's model .*"
                       r"other shapes: model.fc.weight \[5, .*\(here \[7, .*nothing was loaded"):
        other.fit(_loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_resuming_with_another_optimizer_class_is_refused(tmp_path: Path) -> None:
    """SGD resumed from Adam's state failed with KeyError 'momentum' inside torch; AdamW took the
    checkpoint's lr and weight decay silently."""
    erm = recipes.erm(make_model("test_resnet", eval_mode=False))
    erm.fit(_loader("global_rng"), 1, progress=False, checkpoint_dir=tmp_path)
    sgd = {"classifier": torch.optim.SGD(erm.parameters(), lr=0.1, momentum=0.9)}
    with pytest.raises(egl.InputError, match=r"'optimizers' expected the optimizer classes of the checkpoint "
                       r"classifier: Adam, got classifier: SGD"):
        erm.fit(_loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path, resume=True, optimizers=sgd)


def test_a_corrupt_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(egl.InputError, match=r"'path' expected a checkpoint written by egl .*last.pt'"):
        load_checkpoint(tmp_path / "last.pt")
    erm = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match=r"torch.load could not read"):
        erm.fit(_loader("global_rng"), 1, progress=False, checkpoint_dir=tmp_path, resume=True)


def test_a_one_shot_iterator_is_refused_as_a_loader() -> None:
    """A generator of 2 batches trained 2 steps of 5, then blamed drop_last for an empty loader."""
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4) % 5) for _ in range(2)]
    erm = recipes.erm(make_model("test_resnet", eval_mode=False))
    with pytest.raises(egl.InputError, match=r"'loader' expected a re-iterable loader .*got a one-shot iterator"):
        erm.fit((b for b in batches), 5, progress=False)
    assert len(erm.fit(batches, 5, progress=False)) == 5  # a list cycles


def test_unnamed_recipes_of_other_classes_are_told_apart(tmp_path: Path) -> None:
    """Two third-party recipes without a name passed the name check against each other."""

    class First(recipes.ERM):
        name = ""

    class Second(recipes.ERM):
        name = ""

    First(make_model("test_resnet", eval_mode=False)).fit(_loader("global_rng"), 1, progress=False,
                                                         checkpoint_dir=tmp_path)
    with pytest.raises(egl.InputError, match=r"'resume' expected a checkpoint of a '.*Second' recipe, got one of "
                       r"'.*First'"):
        Second(make_model("test_resnet", eval_mode=False)).fit(_loader("global_rng"), 2, progress=False,
                                                              checkpoint_dir=tmp_path, resume=True)


def test_resuming_with_other_recipe_arguments_is_refused_before_anything_is_loaded(tmp_path: Path) -> None:
    """align_weight=0.2 resumed a run trained at 0.1 (another method from the step it left off), and
    a changed lr was silently replaced by the optimizer state's."""
    _align_run(KILL, checkpoint_dir=tmp_path)
    other = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=WARMUP, align_weight=0.2)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(egl.InputError, match=r"'resume' expected a recipe built with the arguments of the checkpoint "
                       r"in .*: align_weight=0.1, got align_weight=0.2.*Build the recipe with align_weight=0.1.*"
                       r"resume=False.*nothing was loaded"):
        other.fit(_loader("global_rng"), STEPS, seed=0, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    erm = recipes.erm(make_model("test_resnet", eval_mode=False), lr=1e-3)
    erm.fit(_loader("global_rng"), 1, progress=False, checkpoint_dir=tmp_path / "erm")
    with pytest.raises(egl.InputError, match=r"lr=0.001, got lr=0.0001"):
        recipes.erm(make_model("test_resnet", eval_mode=False), lr=1e-4).fit(
            _loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path / "erm", resume=True)


def test_a_resume_may_change_memory_options_and_is_bit_exact_with_them(tmp_path: Path) -> None:
    """masker_checkpoint recomputes the masker's activations: same maths, so resuming with it
    changed continues the run (with a warning), here bit-exactly."""
    straight, straight_logs = _align_run(STEPS)
    _align_run(KILL, checkpoint_dir=tmp_path)
    resumed = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=WARMUP,
                            masker_checkpoint=False)
    with pytest.warns(UserWarning, match=r"masker_checkpoint was 'auto', is False \(how a step is computed, not "
                      r"what: the run goes on\)"):
        logs = resumed.fit(_loader("global_rng"), STEPS, seed=0, progress=False, checkpoint_dir=tmp_path,
                           resume=True)
    assert [row["step"] for row in logs] == list(range(KILL, STEPS))
    assert _same_state(straight, resumed)


def test_arguments_a_checkpoint_predates_are_named_and_addresses_are_not_compared(tmp_path: Path) -> None:
    """A checkpoint written before an argument existed (annotated_mean is newer than many runs)
    resumed with the new default without notice; a function's repr differs on every run."""
    _align_run(KILL, checkpoint_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    del ckpt["config"]["annotated_mean"]
    ckpt["config"]["retired_option"] = 3
    save_checkpoint(ckpt, tmp_path / "last.pt")
    with pytest.warns(UserWarning, match=r"annotated_mean='batch' is new \(the checkpoint predates it.*"
                      r"retired_option=3 is not an argument"):
        _align_run(STEPS, checkpoint_dir=tmp_path, resume=True)

    class Hooked(recipes.ERM):
        name = ""

        def __init__(self, model: torch.nn.Module, *, hook: object = None) -> None:
            super().__init__(model)
            self.hook = hook

    Hooked(make_model("test_resnet", eval_mode=False), hook=lambda: 1).fit(
        _loader("global_rng"), 1, progress=False, checkpoint_dir=tmp_path / "hooked")
    logs = Hooked(make_model("test_resnet", eval_mode=False), hook=lambda: 2).fit(
        _loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path / "hooked", resume=True)
    assert [row["step"] for row in logs] == [1]
    # numbers by value: penalty_weight=100 (an int from a YAML file) resumes a run built with 100.0
    domains = [(torch.randn(4, 3, 32, 32), torch.arange(4) % 5, torch.arange(4) % 2)]
    recipes.irm(make_model("test_resnet", eval_mode=False), penalty_weight=100.0).fit(
        domains, 1, progress=False, checkpoint_dir=tmp_path / "irm")
    logs = recipes.irm(make_model("test_resnet", eval_mode=False), penalty_weight=100).fit(
        domains, 2, progress=False, checkpoint_dir=tmp_path / "irm", resume=True)
    assert [row["step"] for row in logs] == [1]


def test_checking_the_loader_draws_nothing_from_its_rng() -> None:
    """The one-shot check first called iter(loader): a DataLoader's iterator draws its base seed
    from the loader's generator, so every run's data order moved (and workers would start)."""
    loader = _loader("own_generator")
    before = loader.generator.get_state()
    global_before = torch.get_rng_state()
    DataStream(loader)
    assert torch.equal(loader.generator.get_state(), before) and torch.equal(torch.get_rng_state(), global_before)


def test_a_file_that_is_not_a_training_checkpoint_is_named_on_resume(tmp_path: Path) -> None:
    """A torch.save of a list was an AttributeError in the resume, a dict without the keys a KeyError."""
    erm = recipes.erm(make_model("test_resnet", eval_mode=False))
    for i, obj in enumerate(([1, 2], {"recipe_name": "erm", "step": 1})):
        (tmp_path / str(i)).mkdir()
        torch.save(obj, tmp_path / str(i) / "last.pt")
        with pytest.raises(egl.InputError, match=r"fit: 'resume' expected a training checkpoint written by "
                                                 r"egl.train.fit \(keys \['step', 'recipe', 'optimizers', 'ranks'\]\)"):
            erm.fit(_loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path / str(i), resume=True)


def test_checkpoint_helpers_name_paths_they_cannot_use(tmp_path: Path) -> None:
    """None or an int was a TypeError from pathlib; a directory, or a path under a file, a raw OSError."""
    from egl.train import latest_checkpoint

    (tmp_path / "afile").write_text("x")
    for bad in (None, 3, ""):
        with pytest.raises(egl.InputError, match=r"save_checkpoint: 'path' expected a path \(a non-empty str"):
            save_checkpoint({"step": 1}, bad)  # type: ignore[arg-type]
        with pytest.raises(egl.InputError, match=r"load_checkpoint: 'path' expected a path"):
            load_checkpoint(bad)  # type: ignore[arg-type]
        with pytest.raises(egl.InputError, match=r"latest_checkpoint: 'checkpoint_dir' expected a path"):
            latest_checkpoint(bad)  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"save_checkpoint: 'path' expected a file path to write the checkpoint "
                                             r"to, got '.*', a directory\. Pass a file in it, e\.g\. '.*last.pt'"):
        save_checkpoint({"step": 1}, tmp_path)
    with pytest.raises(egl.InputError, match=r"save_checkpoint: 'path' expected a file in a folder that can be "
                                             r"created and written, got '.*afile/last.pt' \(FileExistsError"):
        save_checkpoint({"step": 1}, tmp_path / "afile" / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing left behind


def test_a_full_disk_is_an_os_error_not_a_bad_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only errors that say the path cannot hold a file blame 'path': ENOSPC mid-run stays an OSError."""
    import errno
    import tempfile

    def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(OSError, match="No space left") as info:
        save_checkpoint({"a": 1}, tmp_path / "last.pt")
    assert not isinstance(info.value, egl.InputError)


def test_a_resume_with_another_optimizer_is_refused_and_equal_spellings_resume(tmp_path: Path) -> None:
    """Another kind is refused (the optimiser classes differ); other options of the same kind
    would be overridden by the checkpoint's param groups: refused by name too; a spelling of the
    same optimiser resumes."""
    recipes.erm(make_model("test_resnet", eval_mode=False), optimizer="sgd").fit(
        _loader("global_rng"), 1, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(egl.InputError, match=r"optimizer classes of the checkpoint classifier: SGD, got "
                       r"classifier: AdamW"):
        recipes.erm(make_model("test_resnet", eval_mode=False), optimizer="adamw").fit(
            _loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(egl.InputError, match=r"optimizer='sgd', got optimizer=\{'name': 'sgd', 'momentum': 0.5\}"):
        recipes.erm(make_model("test_resnet", eval_mode=False), optimizer={"name": "sgd", "momentum": 0.5}).fit(
            _loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path, resume=True)
    logs = recipes.erm(make_model("test_resnet", eval_mode=False), optimizer={"name": "sgd", "momentum": 0.9}).fit(
        _loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert [row["step"] for row in logs] == [1]


def test_a_component_instance_built_otherwise_refuses_the_resume(tmp_path: Path) -> None:
    """An instance read as its class only: a resume with bce(eps=0.1) went on from bce(eps=1e-6)."""
    def run(eps: float, resume: bool) -> None:
        recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0,
                               alignment=egl.create("alignment", "bce", eps=eps))
        recipe.fit(_loader("global_rng"), 2 if resume else 1, progress=False, checkpoint_dir=tmp_path, resume=resume)

    run(1e-6, False)
    with pytest.raises(egl.InputError, match=r"alignment=\{'name': 'bce', 'kwargs': \{'reduction': 'mean', "
                                             r"'eps': 1e-06\}\}"):
        run(0.1, True)
    run(1e-6, True)  # built alike: the run goes on


@pytest.mark.parametrize("older", ["BCEAlignmentLoss(bce)", "new_argument", "GradCAM(model=ResNet)"])
def test_a_component_described_by_an_older_egl_resumes_with_a_warning(tmp_path: Path, older: str) -> None:
    """Descriptions before the arguments were recorded (a loss's class and name; an explainer's repr),
    and an argument a newer egl added: warned, not refused."""
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0,
                           alignment=egl.create("alignment", "bce"), explainer="grad_cam")
    if older == "GradCAM(model=ResNet)":
        from egl.explainers import GradCAM

        recipe = recipes.align(recipe.model, warmup_steps=0, explainer=GradCAM(recipe.model))
    recipe.fit(_loader("global_rng"), 1, progress=False, checkpoint_dir=tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    key = "explainer" if older.startswith("GradCAM") else "alignment"
    if older == "new_argument":
        del ckpt["config"]["alignment"]["kwargs"]["eps"]  # as if bce had no eps when it was written
        match = r"alignment: eps is a new argument"
    else:
        ckpt["config"][key] = older
        match = rf"{key} was described as '{re.escape(older)}' by an older egl"
    torch.save(ckpt, tmp_path / "last.pt")
    with pytest.warns(UserWarning, match=match):
        recipe.fit(_loader("global_rng"), 2, progress=False, checkpoint_dir=tmp_path, resume=True)
