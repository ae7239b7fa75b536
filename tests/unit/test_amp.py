"""egl._amp: gradients inside a loss, loss-scaled under float16 (inner_scale / inner_grad)."""

from __future__ import annotations

import math

import pytest
import torch
from _helpers import make_model
from torch import Tensor, nn

import egl
from egl import recipes
from egl._amp import inner_grad, inner_scale, inner_scale_for
from egl.recipes.base import Phase
from egl.recipes.erm import ERM
from egl.train import LossScaler


def _tiny_model() -> nn.Module:
    """A CNN whose input gradients (about 1e-9) are below half of float16's smallest subnormal (6e-8)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight.mul_(1e-4)
        model[0].bias.fill_(0.1)
        model[4].weight.mul_(1e-2)
    return model


def test_without_a_scale_it_is_autograd_grad() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    (g,) = inner_grad((x ** 3).sum(), x)
    assert torch.equal(g, 3 * x.detach() ** 2)


def test_float16_input_gradients_survive_only_when_scaled() -> None:
    model = _tiny_model()
    explainer = egl.create("explainer", "input_gradient", model, normalize=False)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
    ref = explainer.explain(x, y).saliency  # float32
    assert 1e-11 < float(ref.abs().max()) < 2.9e-8
    with torch.autocast("cpu", dtype=torch.float16):
        plain = explainer.explain(x, y).saliency
        with inner_scale(2.0**30) as state:  # inner scale: sqrt, capped at 2^15
            scaled = explainer.explain(x, y).saliency
    assert float(plain.abs().max()) == 0.0  # flushed to zero in float16
    assert scaled.dtype == torch.float32
    torch.testing.assert_close(scaled, ref, rtol=2e-2, atol=1e-11)
    assert state is not None and state.scale == 2.0**15
    assert float(state.overflowed(torch.device("cpu"))) == 0.0


def test_the_inner_scale_is_the_square_root_of_the_loss_scale() -> None:
    """Gradients taken *through* an inner gradient keep S / s of the loss scale: s = sqrt(S)
    leaves both sides sqrt(S) of headroom (s = S would leave the second-order terms none)."""
    assert [inner_scale_for(2.0**k) for k in (0, 1, 4, 16, 17, 40)] == [1.0, 1.0, 4.0, 2.0**8, 2.0**8, 2.0**15]
    assert inner_scale_for(0.5) == 1.0
    x = torch.ones(3, requires_grad=True)
    with inner_scale(2.0**16) as state:
        (g,) = inner_grad((x ** 2).sum(), x, create_graph=True)
        g.sum().backward()  # d/dx of sum(2x): 2, whatever the scale
    assert state is not None and state.scale == 2.0**8 and torch.equal(x.grad, torch.full((3,), 2.0))


def test_an_overflowing_inner_gradient_is_flagged_a_non_finite_output_is_not() -> None:
    x = torch.ones(4, requires_grad=True)
    with inner_scale(2.0**16) as state:
        (g,) = inner_grad((x.half() * 1000).sum(), x)  # 1000 * 2^8 overflows float16
    assert state is not None and not torch.isfinite(g).all()
    assert float(state.overflowed(torch.device("cpu"))) == 1.0
    with inner_scale(2.0**16) as state:
        (g,) = inner_grad((x * float("nan")).sum(), x)  # NaN in, NaN out: not an overflow
    assert state is not None and float(state.overflowed(torch.device("cpu"))) == 0.0


class _InnerPenalty(ERM):
    """ERM plus an input-gradient penalty computed in float16 (as under autocast)."""

    name = "inner_penalty"

    def phases(self) -> list[Phase]:
        return [Phase("classifier", (self.model,), self._terms)]

    def _terms(self, batch, step: int) -> dict[str, Tensor]:  # noqa: ANN001
        terms = self._classifier_terms(batch, step)
        leaf = batch.x.detach().requires_grad_(True)
        (g,) = inner_grad((self.model(leaf).half() * 1000).sum(), leaf, create_graph=True)
        penalty = g.pow(2).mean() * 1e-9
        return {"ce": terms["ce"], "penalty": penalty, "total": terms["ce"] + penalty}


def test_a_step_whose_inner_gradient_overflowed_is_skipped_not_stopped() -> None:
    """The penalty turns inf when its gradient overflows float16 at the loss scale: the step is
    skipped and the scale backed off (as for an overflow of the parameters' gradients), instead
    of stopping with NonFiniteLossError; at a smaller scale the same step trains."""
    recipe = _InnerPenalty(make_model("test_resnet", eval_mode=False))
    opts = recipe.configure_optimizers()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in recipe.parameters()]
    scaler = LossScaler(init_scale=2.0**16)
    logs = recipe.training_step((x, y), 0, opts, scalers={"classifier": scaler})
    assert logs["classifier/skipped"] == 1.0 and not math.isfinite(logs["classifier/penalty"])
    assert scaler.scale_value == 2.0**15
    assert all(torch.equal(a, p) for a, p in zip(before, recipe.parameters()))
    scaler = LossScaler(init_scale=2.0**2)
    logs = recipe.training_step((x, y), 1, opts, scalers={"classifier": scaler})
    assert logs["classifier/skipped"] == 0.0 and math.isfinite(logs["classifier/penalty"])
    assert any(not torch.equal(a, p) for a, p in zip(before, recipe.parameters()))


def test_rrr_flags_an_overflow_of_its_inner_gradient_over_many_classes() -> None:
    """A log-softmax over 1000 classes sums the seed 1000 times in its backward: at a large scale
    the inner gradient overflows and is flagged. The differentiated output is summed in float32
    (a float16 sum of 8 x 1000 log-probabilities is -inf by itself, which would hide the overflow)."""
    from egl.losses.rrr import rrr_penalty

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))
    x, mask = torch.randn(8, 3, 8, 8), torch.zeros(8, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.float16):
        with inner_scale(2.0**24) as state:  # inner scale 2^12: 2^12 x 1000 > 65504
            rrr_penalty(model, x, mask)
        assert state is not None and float(state.overflowed(torch.device("cpu"))) == 1.0
        with inner_scale(2.0**8) as state:
            penalty = rrr_penalty(model, x, mask)
        assert state is not None and float(state.overflowed(torch.device("cpu"))) == 0.0
    assert math.isfinite(float(penalty.detach()))


def test_a_nan_batch_still_stops_a_float16_run() -> None:
    """Inner gradients of a NaN batch are NaN because their output is: the step raises as it
    would without scaling (it is not skipped as an overflow)."""
    recipe = recipes.sgt(make_model("test_resnet", eval_mode=False))
    opts = recipe.configure_optimizers()
    x = torch.randn(4, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with torch.autocast("cpu", dtype=torch.float16), pytest.raises(recipes.NonFiniteLossError):
        recipe.training_step((x, torch.tensor([0, 1, 2, 0])), 0, opts, scalers={n: LossScaler() for n in opts})


def test_sgt_under_fp16_scaling_trains() -> None:
    recipe = recipes.sgt(make_model("test_resnet", eval_mode=False))
    opts = recipe.configure_optimizers()
    scalers = {name: LossScaler() for name in opts}
    with torch.autocast("cpu", dtype=torch.float16):
        logs = recipe.training_step((torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])), 0, opts,
                                    scalers=scalers)
    assert all(math.isfinite(v) for v in logs.values()), logs
