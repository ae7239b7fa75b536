"""Learning-rate schedules in fit: the shapes, what each step uses and logs, checkpoints and resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from _helpers import make_model
from torch.utils.data import DataLoader, TensorDataset

import egl
from egl import recipes
from egl.train import LRSchedule

STEPS, LR = 8, 1e-3


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 64, 64, generator=g), torch.arange(12) % 5)
    return DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))


def _erm() -> recipes.Recipe:
    torch.manual_seed(0)
    return recipes.erm(make_model("test_resnet", eval_mode=False), lr=LR)


def test_warmup_then_cosine_matches_torch_cosine_annealing() -> None:
    steps, warmup, final = 20, 4, 0.1
    s = LRSchedule("cosine", warmup=warmup, final=final)
    assert [s.factor(t, steps) for t in range(warmup)] == [0.25, 0.5, 0.75, 1.0]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - warmup, eta_min=final * LR)
    for t in range(warmup, steps):
        assert s.factor(t, steps) * LR == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        ref.step()
    assert s.factor(steps, steps) == pytest.approx(final)  # reached one step after the last


def test_linear_and_constant_shapes() -> None:
    lin = LRSchedule("linear", final=0.0)
    assert [lin.factor(t, 4) for t in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert [LRSchedule("constant", warmup=2).factor(t, 6) for t in range(4)] == [0.5, 1.0, 1.0, 1.0]
    assert LRSchedule().factor(0, 1) == 1.0


def test_fit_runs_each_step_at_the_scheduled_rate_and_logs_it() -> None:
    recipe = _erm()
    schedule = LRSchedule("cosine", warmup=2)
    rows = recipe.fit(_loader(), STEPS, seed=0, progress=False, lr_schedule={"shape": "cosine", "warmup": 2})
    assert [r["classifier/lr"] for r in rows] == pytest.approx([LR * schedule.factor(t, STEPS) for t in range(STEPS)])
    plain = _erm().fit(_loader(), 2, seed=0, progress=False)
    assert "classifier/lr" not in plain[0]  # no schedule: rows as before


def test_every_param_group_logs_its_rate() -> None:
    """A head trained at ten times the backbone's rate: the log held the first group's rate only."""
    recipe = _erm()
    head = list(recipe.model.get_classifier().parameters())
    rest = [p for p in recipe.model.parameters() if all(p is not h for h in head)]
    opt = torch.optim.Adam([{"params": rest}, {"params": head, "lr": 10 * LR}], lr=LR)
    rows = recipe.fit(_loader(), 4, seed=0, progress=False, optimizers={"classifier": opt}, lr_schedule="linear")
    assert [r["classifier/lr"] for r in rows] == pytest.approx([LR * (1 - t / 4) for t in range(4)])
    assert [r["classifier/lr_1"] for r in rows] == pytest.approx([10 * LR * (1 - t / 4) for t in range(4)])


def test_schedule_changes_training_and_constant_without_warmup_does_not() -> None:
    def weights(**kw: object) -> dict[str, torch.Tensor]:
        recipe = _erm()
        recipe.fit(_loader(), 4, seed=0, progress=False, **kw)
        return {k: v.clone() for k, v in recipe.state_dict().items()}

    base, constant, cosine = weights(), weights(lr_schedule="constant"), weights(lr_schedule="cosine")
    assert all(torch.equal(base[k], constant[k]) for k in base)
    assert not all(torch.equal(base[k], cosine[k]) for k in base)


def test_align_masker_joins_at_the_rate_the_run_has_reached() -> None:
    torch.manual_seed(0)
    recipe = recipes.align(make_model("test_resnet", eval_mode=False, output_stride=16), warmup_steps=3)
    rows = recipe.fit(_loader(), 6, seed=0, progress=False, lr_schedule="linear")
    assert [("masker/lr" in r) for r in rows] == [False] * 3 + [True] * 3
    assert rows[3]["masker/lr"] == pytest.approx(recipe.phase_lr("masker") * (1 - 3 / 6))
    assert rows[5]["classifier/lr"] == pytest.approx(recipe.phase_lr("classifier") * (1 - 5 / 6))


def test_own_schedulers_step_once_per_step() -> None:
    recipe = _erm()
    opts = recipe.configure_optimizers()
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opts["classifier"], max_lr=LR, total_steps=STEPS)
    rows = recipe.fit(_loader(), STEPS, seed=0, progress=False, optimizers=opts, schedulers={"classifier": one_cycle})
    ref_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=LR)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=LR, total_steps=STEPS)
    expected = []
    for _ in range(STEPS):
        expected.append(ref_opt.param_groups[0]["lr"])
        ref_opt.step()
        ref.step()
    assert [r["classifier/lr"] for r in rows] == pytest.approx(expected)


def test_resume_mid_run_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sched = {"shape": "cosine", "warmup": 3}
    full = _erm()
    full.fit(_loader(), STEPS, seed=0, progress=False, lr_schedule=sched)

    class Killed(Exception):
        pass

    killed = _erm()
    real = type(killed).training_step

    def dies_at_6(self, batch, step, *a, **k):  # noqa: ANN001 - the recipe's own signature
        if step == 6:
            raise Killed
        return real(self, batch, step, *a, **k)

    monkeypatch.setattr(type(killed), "training_step", dies_at_6)
    with pytest.raises(Killed):
        killed.fit(_loader(), STEPS, seed=0, progress=False, lr_schedule=sched, checkpoint_dir=tmp_path,
                   checkpoint_every=5)
    monkeypatch.setattr(type(killed), "training_step", real)
    resumed = _erm()
    rows = resumed.fit(_loader(), STEPS, seed=0, progress=False, lr_schedule=sched, checkpoint_dir=tmp_path,
                       resume=True)
    assert [r["step"] for r in rows] == [5, 6, 7]
    assert rows[0]["classifier/lr"] == pytest.approx(LR * LRSchedule("cosine", warmup=3).factor(5, STEPS))
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in resumed.state_dict().items())
    with pytest.raises(egl.InputError, match=r"'lr_schedule' expected schedulers for the phases .*\['classifier'\], "
                                             r"got \[\]"):
        _erm().fit(_loader(), STEPS, seed=0, progress=False, checkpoint_dir=tmp_path, resume=True)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lr_schedule": "exp"}, r"'lr_schedule' expected one of \['constant', 'cosine', 'linear'\], got 'exp'"),
    ({"lr_schedule": {"shape": "cosine", "warmup": -1}}, r"'lr_schedule.warmup' expected an int >= 0, got -1"),
    ({"lr_schedule": {"shape": "cosine", "final": 2}}, r"'lr_schedule.final' expected a factor in \[0, 1\], got 2"),
    ({"lr_schedule": {"shape": "cosine", "decay": 1}}, r"'lr_schedule.decay' expected one of LRSchedule's fields"),
    ({"lr_schedule": 3}, r"'lr_schedule' expected one of"),
    ({"lr_schedule": "cosine", "schedulers": {}}, r"'schedulers' expected None when lr_schedule is given"),
    ({"schedulers": ["x"]}, r"'schedulers' expected a dict of learning-rate schedulers keyed by phase name"),
    ({"schedulers": {"masker": None}}, r"'schedulers' expected keys among the phase names \['classifier'\]"),
    ({"schedulers": {"classifier": 0.5}}, r"'schedulers' expected torch.optim.lr_scheduler schedulers .*float"),
])
def test_bad_schedules_are_named_before_training(kwargs: dict, match: str) -> None:
    recipe = _erm()
    before = {k: v.clone() for k, v in recipe.state_dict().items()}
    with pytest.raises(egl.InputError, match=f"egl.train.fit: {match}"):
        recipe.fit(_loader(), 2, seed=0, progress=False, **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in recipe.state_dict().items())


def test_schedulers_on_other_optimisers_or_on_a_metric_are_refused() -> None:
    recipe = _erm()
    stray = torch.optim.Adam(recipe.model.parameters(), lr=LR)  # fit builds its own optimisers
    with pytest.raises(egl.InputError, match="built on another optimiser .*pass those optimisers too"):
        recipe.fit(_loader(), 2, progress=False,
                   schedulers={"classifier": torch.optim.lr_scheduler.StepLR(stray, 1)})
    opts = recipe.configure_optimizers()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opts["classifier"])
    with pytest.raises(egl.InputError, match="ReduceLROnPlateau, which steps on a metric"):
        recipe.fit(_loader(), 2, progress=False, optimizers=opts, schedulers={"classifier": plateau})


def test_the_log_header_names_the_schedule(tmp_path: Path) -> None:
    import json

    _erm().fit(_loader(), 2, seed=0, progress=False, log_path=tmp_path / "log.jsonl", lr_schedule="cosine")
    header = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert header["lr_schedule"] == {"classifier": "LRSchedule('cosine', warmup=0, final=0.0) over 2 steps"}
    assert math.isfinite(json.loads((tmp_path / "log.jsonl").read_text().splitlines()[1])["classifier/lr"])


def test_a_resume_with_another_schedule_or_length_is_refused(tmp_path: Path) -> None:
    """Loading the scheduler's state would otherwise replace the run's schedule with the
    checkpoint's silently: 4 more steps of a 4-step cosine trained at rate 0."""
    sched = {"shape": "cosine", "warmup": 1}
    _erm().fit(_loader(), 4, seed=0, progress=False, lr_schedule=sched, checkpoint_dir=tmp_path)
    for kw, what in (({"lr_schedule": sched}, "over 8 steps"), ({"lr_schedule": "linear"}, "'linear'")):
        with pytest.raises(egl.InputError, match=r"'lr_schedule' expected the schedule the checkpoint .* was trained "
                                                 rf"with: LRSchedule\('cosine', warmup=1, final=0.0\) over 4 steps, "
                                                 rf"got .*{what}"):
            _erm().fit(_loader(), 8 if "over 8" in what else 4, seed=0, progress=False, checkpoint_dir=tmp_path,
                       resume=True, **kw)


def test_numpy_fields_are_plain_numbers_and_checkpoints_load(tmp_path: Path) -> None:
    import numpy as np

    s = LRSchedule("cosine", warmup=np.int64(1), final=np.float64(0.1))
    assert type(s.warmup) is int and type(s.final) is float
    _erm().fit(_loader(), 2, seed=0, progress=False, lr_schedule=s, checkpoint_dir=tmp_path)
    torch.load(tmp_path / "last.pt", weights_only=True)  # as resume reads it
    rows = _erm().fit(_loader(), 2, seed=0, progress=False, lr_schedule=s, checkpoint_dir=tmp_path, resume=True)
    assert rows == []  # loaded (and nothing left to train)


def test_once_only_warnings_stay_once_with_a_schedule() -> None:
    import warnings

    class Noisy(recipes.ERM):
        def training_step(self, *args, **kwargs):  # noqa: ANN002, ANN003
            warnings.warn("noisy recipe", UserWarning)  # the same location every step
            return super().training_step(*args, **kwargs)

    for schedule in (None, "cosine"):
        torch.manual_seed(0)
        recipe = Noisy(make_model("test_resnet", eval_mode=False))
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("default")  # once per location
            recipe.fit(_loader(), 4, seed=0, progress=False, lr_schedule=schedule)
        assert sum("noisy recipe" in str(w.message) for w in seen) == 1, schedule


def test_a_warmup_as_long_as_the_run_warns_and_none_is_no_schedule() -> None:
    with pytest.warns(UserWarning, match=r"warmup=5 is not shorter than steps=4: .*at most 0.8 of it"):
        _erm().fit(_loader(), 4, seed=0, progress=False, lr_schedule={"shape": "cosine", "warmup": 5})
    rows = _erm().fit(_loader(), 2, seed=0, progress=False, lr_schedule="none")
    assert "classifier/lr" not in rows[0]
    with pytest.raises(egl.InputError, match=r"'lr_schedule.warm_up' expected one of LRSchedule's fields .* "
                                             r"Did you mean 'lr_schedule.warmup'\?"):
        _erm().fit(_loader(), 2, progress=False, lr_schedule={"warm_up": 3})
