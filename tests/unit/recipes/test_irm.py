"""IRM recipe: the IRMv1 penalty against hand computations, the λ schedule, the Adam reset, domains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model

import egl
from egl.recipes.irm import IRM, irm, irm_penalty

DOMAIN_MESSAGE = r"IRM needs \(x, y, domain\) batches or dict key 'domain'"


def _batch(n: int = 8, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % 3
    domain = torch.tensor([0, 1, 0, 1, 0, 1, 2, 2, 1, 0, 2, 2])[:n]
    return x, y, domain


def _manual_penalty(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DomainBed's ``_irm_penalty``, written out."""
    scale = torch.tensor(1.0, requires_grad=True)
    g1 = torch.autograd.grad(F.cross_entropy(logits[::2] * scale, y[::2]), [scale], create_graph=True)[0]
    g2 = torch.autograd.grad(F.cross_entropy(logits[1::2] * scale, y[1::2]), [scale], create_graph=True)[0]
    return torch.sum(g1 * g2)


def _closed_form_grad(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE(s z, y) / d s at s = 1 equals mean_i (softmax(z_i) . z_i - z_i[y_i])."""
    p = logits.softmax(1)
    return ((p * logits).sum(1) - logits.gather(1, y[:, None])[:, 0]).mean()


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_three_steps_on_tiny_models(name: str) -> None:
    kwargs = {"output_stride": 16} if name == "test_resnet" else {}
    recipe = irm(make_model(name, eval_mode=False, **kwargs), anneal_steps=1)
    logs = recipe.fit([_batch(6)], steps=3, seed=0, progress=False)
    assert len(logs) == 3
    assert set(logs[0]) == {"step", "classifier/ce", "classifier/penalty", "classifier/penalty_weight",
                            "classifier/total"}
    assert all(torch.isfinite(torch.tensor(v)) for row in logs for v in row.values())
    assert [row["classifier/penalty_weight"] for row in logs] == [1.0, 100.0, 100.0]


def test_terms_match_a_hand_computation() -> None:
    model = make_model("test_resnet")
    recipe = IRM(model, anneal_steps=3).eval()
    x, y, d = _batch(8)
    logits = model(x).detach()
    ce, pens = [], []
    for dom in (0, 1, 2):
        idx = torch.nonzero(d == dom)[:, 0]  # batch order within the domain
        ce.append(F.cross_entropy(logits[idx], y[idx]))
        pens.append(_manual_penalty(logits[idx], y[idx]))
        even, odd = idx[::2], idx[1::2]
        by_formula = _closed_form_grad(logits[even], y[even]) * _closed_form_grad(logits[odd], y[odd])
        assert torch.allclose(pens[-1], by_formula, rtol=1e-5, atol=1e-9)
        assert torch.allclose(irm_penalty(logits[idx], y[idx]), pens[-1], rtol=1e-6, atol=1e-12)
    want_ce, want_pen = torch.stack(ce).mean(), torch.stack(pens).mean()
    for step, lam in ((0, 1.0), (2, 1.0), (3, 100.0), (50, 100.0)):
        terms = recipe.compute_phase("classifier", (x, y, d), step)
        assert torch.allclose(terms["ce"], want_ce, rtol=1e-5)
        assert torch.allclose(terms["penalty"], want_pen, rtol=1e-4, atol=1e-10)
        assert float(terms["penalty_weight"]) == lam and terms["penalty_weight"].dim() == 0
        assert torch.allclose(terms["total"], want_ce + lam * want_pen, rtol=1e-5)


def test_penalty_is_differentiable_and_reaches_the_model() -> None:
    model = make_model("test_resnet")
    terms = IRM(model).compute_phase("classifier", _batch(8), 0)
    assert terms["penalty"].requires_grad
    terms["penalty"].backward()
    assert model.conv1[0].weight.grad.abs().sum() > 0 and model.fc.weight.grad.abs().sum() > 0


def test_rescale_divides_by_lambda_once_it_exceeds_one() -> None:
    model = make_model("test_resnet")
    batch = _batch(8)
    plain = IRM(model, anneal_steps=2).compute_phase("classifier", batch, 2)
    scaled = IRM(model, anneal_steps=2, rescale=True)
    after = scaled.compute_phase("classifier", batch, 2)
    assert torch.allclose(after["total"], (after["ce"] + 100 * after["penalty"]) / 100, rtol=1e-5)
    assert torch.allclose(after["total"] * 100, plain["total"], rtol=1e-5)
    before = scaled.compute_phase("classifier", batch, 1)  # λ = 1: nothing to divide
    assert torch.allclose(before["total"], before["ce"] + before["penalty"], rtol=1e-6)


def test_domains_too_small_to_split_have_no_penalty() -> None:
    model = make_model("test_resnet")
    x, y, _ = _batch(5)
    d = torch.tensor([0, 0, 0, 1, 2])  # domains 1 and 2 have a single sample
    terms = IRM(model).compute_phase("classifier", (x, y, d), 0)
    logits = model(x).detach()
    assert torch.allclose(terms["penalty"], _manual_penalty(logits[:3], y[:3]), rtol=1e-4, atol=1e-12)
    want_ce = torch.stack([F.cross_entropy(logits[:3], y[:3]), F.cross_entropy(logits[3:4], y[3:4]),
                           F.cross_entropy(logits[4:], y[4:])]).mean()
    assert torch.allclose(terms["ce"], want_ce, rtol=1e-5)
    alone = IRM(model).compute_phase("classifier", (x, y, torch.arange(5)), 0)
    assert float(alone["penalty"]) == 0.0 and torch.isfinite(alone["total"])


def test_annealing_step_resets_the_optimiser_state() -> None:
    def run(anneal_steps: int) -> tuple[torch.optim.Optimizer, list[dict[str, float]]]:
        recipe = irm(make_model("test_resnet", eval_mode=False), anneal_steps=anneal_steps)
        opts = recipe.configure_optimizers()
        opt = opts["classifier"]
        logs = recipe.fit([_batch(6, size=32)], steps=3, optimizers=opts, progress=False)
        assert opts["classifier"] is opt  # reset in place: a custom loop's reference stays valid
        return opt, logs

    reset, logs = run(anneal_steps=2)
    assert [row["classifier/penalty_weight"] for row in logs] == [1.0, 1.0, 100.0]
    steps = {float(s["step"]) for s in reset.state.values()}
    assert steps == {1.0}  # state forgotten at step 2, then one Adam step
    kept, _ = run(anneal_steps=5)
    assert {float(s["step"]) for s in kept.state.values()} == {3.0}


def test_reset_optimizer_keeps_param_groups() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    opt.param_groups[0]["lr"] = 0.01
    IRM.reset_optimizer(opt)
    assert len(opt.state) == 0 and opt.param_groups[0]["lr"] == 0.01
    p.grad = torch.ones(3)
    opt.step()  # a fresh Adam step: |Δ| = lr
    assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.1 - 0.01), atol=1e-6)


def test_missing_domains_say_what_irm_needs() -> None:
    recipe = irm(make_model("test_resnet"))
    x, y, _ = _batch(4, size=32)
    assert IRM.needs_domains
    with pytest.raises(egl.InputError, match=DOMAIN_MESSAGE):
        recipe.compute_phase("classifier", (x, y), 0)
    with pytest.raises(egl.InputError, match=DOMAIN_MESSAGE):
        recipe.compute_phase("classifier", {"image": x, "label": y}, 0)
    with pytest.raises(egl.InputError, match=DOMAIN_MESSAGE):
        recipe.fit([(x, y)], steps=1, progress=False)


def test_bad_arguments() -> None:
    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match="'anneal_steps' expected an int >= 0"):
        irm(model, anneal_steps=-1)
    with pytest.raises(egl.InputError, match="'penalty_weight'"):
        irm(model, penalty_weight=float("nan"))
    with pytest.raises(egl.InputError, match="at least 2 samples"):
        irm_penalty(torch.randn(1, 3), torch.tensor([0]))
