"""Weight averaging in fit (ema=): the bias-corrected average, validation on it, checkpoints, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _helpers import make_model
from torch.utils.data import DataLoader, TensorDataset

import egl
from egl import recipes
from egl.train import Validation
from egl.train.ema import WeightAverage

STEPS, DECAY = 6, 0.8


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(12, 3, 64, 64, generator=g), torch.arange(12) % 5)
    return DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))


class _Recorded(recipes.ERM):
    """ERM that records the classifier's state after every step (the raw trajectory)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.trajectory: list[dict[str, torch.Tensor]] = []

    def training_step(self, *args, **kwargs):  # noqa: ANN002, ANN003
        logs = super().training_step(*args, **kwargs)
        self.trajectory.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return logs


def _recorded() -> _Recorded:
    torch.manual_seed(0)
    return _Recorded(make_model("test_resnet", eval_mode=False), lr=1e-3)


def _expected_average(trajectory: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """sum_i decay**(t-1-i) w_i / sum_i decay**(t-1-i), in float64; integer buffers: the last."""
    t = len(trajectory)
    weights = [decay ** (t - 1 - i) for i in range(t)]
    out = {}
    for k, last in trajectory[-1].items():
        if last.is_floating_point():
            out[k] = sum(w * s[k].double() for w, s in zip(weights, trajectory)) / sum(weights)
        else:
            out[k] = last
    return out


def test_the_average_is_bias_corrected() -> None:
    m = torch.nn.Linear(3, 2)
    avg = WeightAverage(m, 0.5)
    assert avg.average() == {}
    seen = []
    for v in (1.0, 2.0, 4.0):
        with torch.no_grad():
            m.weight.fill_(v)
        avg.update(m)
        seen.append(v)
    assert float(avg.average()["weight"][0, 0]) == pytest.approx((1 * 0.25 + 2 * 0.5 + 4) / 1.75)


def test_fit_ends_with_the_average_of_the_trajectory_and_trains_as_without() -> None:
    plain = _recorded()
    plain.fit(_loader(), STEPS, seed=0, progress=False)
    averaged = _recorded()
    averaged.fit(_loader(), STEPS, seed=0, progress=False, ema=DECAY,
                 validation=Validation(_loader(), every=2))  # validation swaps the average in and out
    for a, b in zip(plain.trajectory, averaged.trajectory):  # the raw weights trained exactly as without
        assert all(torch.equal(a[k], b[k]) for k in a)
    expected = _expected_average(plain.trajectory, DECAY)
    final = averaged.model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(final[k].double(), v.to(final[k].device).double() if v.is_floating_point()
                                   else v.double(), rtol=1e-5, atol=1e-6)
    assert int(final["bn1.num_batches_tracked"]) == STEPS  # integer buffers: the latest
    assert not torch.equal(final["fc.weight"], plain.model.state_dict()["fc.weight"])


def test_validation_measures_the_average() -> None:
    val = Validation(_loader(), every=STEPS)
    recipe = _recorded()
    recipe.fit(_loader(), STEPS, seed=0, progress=False, ema=DECAY, validation=val)
    recipe.eval()
    with torch.no_grad():
        correct = sum(int((recipe.model(x).argmax(1) == y).sum()) for x, y in _loader())
    assert val.records[-1]["acc"] == pytest.approx(correct / 12)


def test_resume_with_an_average_is_bit_exact_and_checks_the_decay(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    full = _recorded()
    full.fit(_loader(), STEPS, seed=0, progress=False, ema=DECAY)

    class Killed(Exception):
        pass

    real = recipes.ERM.training_step

    def dies_at_4(self, batch, step, *a, **k):  # noqa: ANN001 - the recipe's own signature
        if step == 4:
            raise Killed
        return real(self, batch, step, *a, **k)

    monkeypatch.setattr(recipes.ERM, "training_step", dies_at_4)
    with pytest.raises(Killed):
        _recorded().fit(_loader(), STEPS, seed=0, progress=False, ema=DECAY, checkpoint_dir=tmp_path,
                        checkpoint_every=3)
    monkeypatch.setattr(recipes.ERM, "training_step", real)
    for ema, match in ((None, r"'ema' expected the weight average .* ema=0.8, got ema=None"),
                       (0.9, r"'ema' expected the weight average .* ema=0.8, got ema=0.9")):
        with pytest.raises(egl.InputError, match=match):
            _recorded().fit(_loader(), STEPS, seed=0, progress=False, ema=ema, checkpoint_dir=tmp_path, resume=True)
    resumed = _recorded()
    resumed.fit(_loader(), STEPS, seed=0, progress=False, ema=DECAY, checkpoint_dir=tmp_path, resume=True)
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in resumed.state_dict().items())


@pytest.mark.parametrize("ema", [0.0, 1.0, -0.5, 1.5, True, float("nan"), "0.9"])
def test_bad_decays_are_named(ema: object) -> None:
    with pytest.raises(egl.InputError, match=r"egl.train.fit: 'ema' expected None or a decay in \(0, 1\)"):
        _recorded().fit(_loader(), 1, progress=False, ema=ema)


def test_frozen_parameters_are_left_alone_and_selection_does_not_warn() -> None:
    import warnings

    recipe = _recorded()
    for p in recipe.model.conv1.parameters():
        p.requires_grad_(False)
    frozen = {f"conv1.{k}": v.detach().clone() for k, v in recipe.model.conv1.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe.fit(_loader(), STEPS, seed=0, progress=False, ema=DECAY,
                   validation=Validation(_loader(), every=2, select="acc"))
    assert all(torch.equal(recipe.model.state_dict()[k], v) for k, v in frozen.items())


def test_weight_average_checks_its_decay_and_state() -> None:
    m = torch.nn.Linear(2, 1)
    for bad in (1.0, 2.0, "0.9", None):
        with pytest.raises(egl.InputError, match="egl.train.WeightAverage: 'decay' expected"):
            WeightAverage(m, bad)
    a, b = WeightAverage(m, 0.9), WeightAverage(m, 0.5)
    a.update(m)
    with pytest.raises(egl.InputError, match="'state' expected an average with decay 0.5"):
        b.load_state_dict(a.state_dict())
