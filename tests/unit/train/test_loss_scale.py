"""float16 loss scaling: egl.train.LossScaler, training_step(scalers=...) and fit(precision="fp16")."""

from __future__ import annotations

import math
import re

import pytest
import torch
from _helpers import count_egl_reads, make_model

import egl
from egl import recipes
from egl.train import LossScaler


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0])


def test_unscale_is_exact_and_flags_overflow() -> None:
    scaler = LossScaler(init_scale=2.0**10)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    h = torch.nn.Parameter(torch.tensor([0.5], dtype=torch.float16))
    unused = torch.nn.Parameter(torch.ones(1))  # no gradient: skipped
    scaler.scale((w * 3).sum() + (h.float() * 5).sum()).backward()
    found = scaler.unscale_([w, h, unused])
    assert found.shape == (1,) and float(found) == 0.0
    assert w.grad.tolist() == [3.0, 3.0] and h.grad.tolist() == [5.0] and unused.grad is None
    w.grad = torch.tensor([float("inf"), 1.0])
    assert float(scaler.unscale_([w, h])) == 1.0


def test_update_backs_off_and_grows() -> None:
    scaler = LossScaler(init_scale=8.0, growth_interval=3)
    scaler.update(True)
    assert scaler.scale_value == 4.0
    for _ in range(2):
        scaler.update(False)
    assert scaler.scale_value == 4.0
    scaler.update(False)
    assert scaler.scale_value == 8.0  # three good steps in a row
    state = scaler.state_dict()
    other = LossScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state and "scale=8" in repr(other)


def test_arguments_are_checked() -> None:
    for kw, msg in (({"init_scale": 1000.0}, "'init_scale' expected a power of two >= 1"),
                    ({"growth_factor": 1.5}, "'growth_factor' expected a power of two above 1"),
                    ({"backoff_factor": 2.0}, "'backoff_factor' expected a power of two below 1"),
                    ({"growth_interval": 0}, "'growth_interval' expected an int >= 1, got 0")):
        with pytest.raises(egl.InputError, match=rf"egl.train.LossScaler: {msg}"):
            LossScaler(**kw)
    for bad, fix in (([torch.tensor(1.0), torch.tensor(2.0)], "Sum the loss terms into one tensor first"),
                     (torch.tensor(3), r"Convert it, e.g. loss.float\(\)")):  # (a list: "can't multiply sequence")
        with pytest.raises(egl.InputError, match=rf"LossScaler.scale: 'loss' expected a floating-point tensor .*{fix}"):
            LossScaler().scale(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("init_scale", [0.5, 2.0**-10, 0.0, -4.0, True, float("inf"), float("nan"), "8"])
def test_init_scale_below_one_or_not_a_number_is_refused(init_scale: object) -> None:
    """LossScaler(init_scale=0.5) was taken: a scale below 1 shrinks float16 gradients toward
    underflow (and training_step raised at the first overflow as if no scale could help)."""
    with pytest.raises(egl.InputError, match=rf"egl.train.LossScaler: 'init_scale' expected a power of two >= 1 "
                                             rf"\(.*underflow\), got {re.escape(repr(init_scale))}\. Pass e.g. "):
        LossScaler(init_scale=init_scale)  # type: ignore[arg-type]
    for kw in ({"growth_factor": True}, {"backoff_factor": 1.0}, {"growth_factor": 1.0},
               {"growth_interval": True}, {"growth_interval": 2.5}):
        with pytest.raises(egl.InputError, match=rf"egl.train.LossScaler: '{next(iter(kw))}' expected "):
            LossScaler(**kw)  # type: ignore[arg-type]
    assert LossScaler(init_scale=1).scale_value == 1.0 and LossScaler(init_scale=2.0**127).scale_value == 2.0**127


def test_scaled_step_equals_the_unscaled_step() -> None:
    # powers of two scale exactly: with no overflow the parameters come out bit-for-bit the same
    params = []
    for scalers in (None, {"classifier": LossScaler(init_scale=2.0**12)}):
        recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
        opts = recipe.configure_optimizers()
        for step in range(3):
            logs = recipe.training_step(_batch(step), step, opts, **({"scalers": scalers} if scalers else {}))
        params.append([p.detach().clone() for p in recipe.parameters()])
    assert logs["classifier/loss_scale"] == 2.0**12 and logs["classifier/skipped"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(*params))


def test_overflowing_step_is_skipped_and_the_scale_halved() -> None:
    model = make_model("test_resnet", eval_mode=False)
    with torch.no_grad():
        model.get_classifier().weight.mul_(1e3)  # gradients x 2^127 then overflow float32
    recipe = recipes.erm(model)
    opts = recipe.configure_optimizers()
    before = [p.detach().clone() for p in recipe.parameters()]
    scaler = LossScaler(init_scale=2.0**127)
    logs = recipe.training_step(_batch(), 0, opts, scalers={"classifier": scaler})
    assert logs["classifier/skipped"] == 1.0 and logs["classifier/loss_scale"] == 2.0**127
    assert math.isfinite(logs["classifier/ce"])  # the loss itself is fine: no NonFiniteLossError
    assert scaler.scale_value == 2.0**126
    assert all(torch.equal(a, p) for a, p in zip(before, recipe.parameters()))
    assert all(p.grad is None for p in recipe.parameters())
    assert not opts["classifier"].state  # Adam never stepped


def test_fit_fp16_trains_align_and_resumes_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    batch = _batch()

    def run(steps: int, **kw):  # type: ignore[no-untyped-def]
        recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=1)
        return recipe, recipe.fit([batch], steps, seed=0, progress=False, precision="fp16", **kw)

    straight, logs = run(4)
    assert logs[0].keys() >= {"classifier/ce", "classifier/loss_scale", "classifier/skipped"}
    assert "masker/loss_scale" in logs[2]  # the masker phase has its own scaler from step 1
    assert all(math.isfinite(v) for row in logs for v in row.values())
    assert logs[0]["classifier/loss_scale"] == 2.0**16
    run(2, checkpoint_dir=tmp_path / "a")
    resumed, more = run(4, checkpoint_dir=tmp_path / "a", resume=True)
    assert [row["step"] for row in more] == [2, 3]
    assert more == logs[2:]  # scales, skips and losses replayed
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    assert set(ckpt["loss_scalers"]) == {"masker", "classifier"}
    ckpt["loss_scalers"]["classifier"]["scale"] = 2.0**9  # a resumed run takes the saved scale
    ckpt["step"] = 3
    torch.save(ckpt, tmp_path / "a" / "last.pt")
    _, last = run(4, checkpoint_dir=tmp_path / "a", resume=True)
    assert last[0]["classifier/loss_scale"] == 2.0**9


def test_fit_takes_the_loss_scalers_arguments() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    logs = recipe.fit([_batch()], 3, seed=0, progress=False, precision="fp16",
                      loss_scale={"init_scale": 2.0**4, "growth_interval": 1})
    assert [row["classifier/loss_scale"] for row in logs] == [2.0**4, 2.0**5, 2.0**6]  # grows every good step
    with pytest.raises(egl.InputError, match=r"'loss_scale' expected None unless precision='fp16'.*Pass "
                                             r"precision='fp16', or leave loss_scale out"):
        recipe.fit([_batch()], 1, progress=False, precision="bf16", loss_scale={"init_scale": 2.0})
    with pytest.raises(egl.InputError, match=r"'loss_scale' expected a dict with keys among \['init_scale'"):
        recipe.fit([_batch()], 1, progress=False, precision="fp16", loss_scale={"scale": 2.0})
    with pytest.raises(egl.InputError, match=r"LossScaler: 'init_scale' expected a power of two >= 1"):
        recipe.fit([_batch()], 1, progress=False, precision="fp16", loss_scale={"init_scale": 1000})


def test_gradients_not_finite_at_any_scale_stop_the_run() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    opts = recipe.configure_optimizers()
    scaler = LossScaler(init_scale=1.0)
    with torch.no_grad():
        recipe.model.get_classifier().weight.mul_(1e3)
    recipe.model.get_classifier().weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    with pytest.raises(recipes.NonFiniteLossError, match=r"the gradients of phase 'classifier' are not finite "
                                                         r"even with the loss scaled down to 0.5 at step 0"):
        recipe.training_step(_batch(), 0, opts, scalers={"classifier": scaler})


def test_parameter_listed_twice_is_unscaled_once_and_state_is_checked() -> None:
    scaler = LossScaler(init_scale=4.0)
    w = torch.nn.Parameter(torch.tensor([1.0]))
    scaler.scale(w.sum() * 3).backward()
    scaler.unscale_([w, w])
    assert w.grad.tolist() == [3.0]
    with pytest.raises(egl.InputError, match=r"LossScaler.load_state_dict: 'state' expected a dict with keys"):
        scaler.load_state_dict({"scale": 2.0})
    for value in (3.0, 0.0, -2.0, float("inf"), True, "2"):
        with pytest.raises(egl.InputError, match=r"load_state_dict: 'state\['scale'\]' expected a positive power of two"):
            scaler.load_state_dict({**scaler.state_dict(), "scale": value})
    scaler.load_state_dict({**scaler.state_dict(), "scale": 0.5})  # (older versions took init_scale=0.5)
    assert scaler.scale_value == 0.5


def test_reads_per_step_with_a_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    # the overflow flag travels in the phase's one read
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0)
    opts = recipe.configure_optimizers()
    scalers = {name: LossScaler() for name in opts}
    recipe.training_step(_batch(), 0, opts, scalers=scalers)
    counts = count_egl_reads(monkeypatch)
    recipe.training_step(_batch(1), 1, opts, scalers=scalers)
    assert counts == {"recipes/base.py": 2, "recipes/batch.py": 2}, counts
