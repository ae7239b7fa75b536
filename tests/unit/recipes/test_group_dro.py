"""GroupDRO: the online group weights and loss against a float64 reference of Sagawa et al.'s
Algorithm 1 (groups present in the batch renormalised), each grouping's ids, and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import egl
from egl import recipes

K = 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, K)).double()


def _batch(seed: int, n: int = 12, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64),
            "label": torch.randint(K, (n,), generator=g), **extra}


def _reference(model: nn.Module, batches: list[dict[str, torch.Tensor]], ids: list[torch.Tensor], eta: float,
               ) -> tuple[list[torch.Tensor], list[float], torch.Tensor]:
    """Per batch: L_g, q_g <- q_g exp(eta L_g) for the groups present, loss = sum_g q_g L_g / sum_g q_g
    over those; gradients of the last loss with respect to the model's weight."""
    q: dict[int, float] = {}
    losses, grads = [], None
    for batch, gid in zip(batches, ids):
        model.zero_grad()
        per = nn.functional.cross_entropy(model(batch["image"]), batch["label"], reduction="none")
        groups = sorted(set(gid.tolist()))
        means = {g: per[gid == g].mean() for g in groups}
        for g in groups:
            q[g] = q.get(g, 1.0) * float(torch.exp(eta * means[g].detach()))
        total = sum(q[g] * means[g] for g in groups) / sum(q[g] for g in groups)
        total.backward()
        losses.append(total.detach())
        grads = model[1].weight.grad.clone()
    norm = sum(q.values())
    return losses, [q.get(g, 0.0) / norm for g in range(max(q) + 1)], grads


@pytest.mark.parametrize("groups", ["domain", "class", "domain_class", "shortcut"])
def test_loss_weights_and_gradients_match_the_reference(groups: str) -> None:
    batches = [_batch(s, domain=torch.randint(3, (12,), generator=torch.Generator().manual_seed(10 + s)),
                      shortcut=torch.randint(-1, K, (12,), generator=torch.Generator().manual_seed(20 + s)))
               for s in range(4)]
    batches[1] = {k: v[:5] for k, v in batches[1].items()}  # a batch missing some groups
    ids = {"domain": [b["domain"] for b in batches], "class": [b["label"] for b in batches],
           "domain_class": [b["domain"] * K + b["label"] for b in batches],
           "shortcut": [b["label"] * (K + 1) + b["shortcut"] + 1 for b in batches]}[groups]
    eta = 0.5  # large enough for the weights to tilt visibly in four steps
    losses, weights, grad = _reference(_model(), batches, ids, eta)
    recipe = recipes.group_dro(_model(), groups=groups, eta=eta, max_groups=64)
    recipe.train()
    for batch, want in zip(batches, losses):
        recipe.model.zero_grad()
        terms = recipe.compute_phase("classifier", batch, step=0)
        terms["total"].backward()
        torch.testing.assert_close(terms["total"].double(), want, rtol=1e-5, atol=0)
    want = torch.tensor(weights, dtype=torch.float64)
    seen = recipe.weights[:len(weights)].double()[want > 0]  # (groups never seen keep their initial weight)
    torch.testing.assert_close(seen / seen.sum(), want[want > 0], rtol=1e-5, atol=1e-7)
    # (the group weights are kept in float32: ~1e-7 relative, times gradients of order 1)
    torch.testing.assert_close(recipe.model[1].weight.grad, grad, rtol=1e-4, atol=1e-6)


def test_the_worst_group_gains_weight_and_the_loss_leans_towards_it() -> None:
    recipe = recipes.group_dro(_model(), groups="domain", eta=1.0)
    recipe.train()
    batch = _batch(0, n=8, domain=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    batch["label"] = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.no_grad():  # domain 1's images scaled up: confident mistakes, a larger loss
        batch["image"][4:] *= 20
    terms = [recipe.compute_phase("classifier", batch, step=s) for s in range(5)]
    w = recipe.weights
    assert w[1] > w[0] > 0
    assert float(terms[-1]["total"]) > float(terms[-1]["ce"])  # the worse domain weighs more than its share
    assert float(terms[-1]["worst_group"]) >= float(terms[-1]["total"])


def test_weights_change_only_in_training_and_are_checkpointed() -> None:
    recipe = recipes.group_dro(_model(), groups="class")
    recipe.eval()
    recipe.compute_phase("classifier", _batch(0), step=0)
    assert torch.equal(recipe.log_q, torch.zeros(1024))
    recipe.train()
    recipe.compute_phase("classifier", _batch(0), step=0)
    assert not torch.equal(recipe.log_q, torch.zeros(1024))
    other = recipes.group_dro(_model(), groups="class")
    other.load_state_dict(recipe.state_dict())
    assert torch.equal(other.log_q, recipe.log_q)


def test_fit_on_dict_batches_with_shortcut_labels() -> None:
    batches = [_batch(s, shortcut=torch.randint(-1, K, (12,))) for s in range(3)]
    batches = [{k: (v.float() if k == "image" else v) for k, v in b.items()} for b in batches]
    recipe = recipes.group_dro(nn.Sequential(nn.Flatten(), nn.Linear(48, K)), groups="shortcut")
    logs = recipe.fit(batches, 3, seed=0, progress=False)
    assert len(logs) == 3 and {"classifier/ce", "classifier/worst_group", "classifier/total"} <= set(logs[-1])
    assert recipe.log_q.abs().sum() > 0


def test_bad_arguments_and_batches_are_named() -> None:
    with pytest.raises(egl.InputError, match=r"'groups' expected one of .*'domain'.*got 'place'"):
        recipes.group_dro(_model(), groups="place")
    with pytest.raises(egl.InputError, match=r"'eta' expected"):
        recipes.group_dro(_model(), eta=-1.0)
    with pytest.raises(egl.InputError, match=r"'max_groups' expected"):
        recipes.group_dro(_model(), max_groups=0)
    with pytest.raises(egl.InputError, match=r"'batch' expected \(x, y, domain\) batches.*GroupDRO with groups"):
        recipes.group_dro(_model()).compute_phase("classifier", _batch(0), 0)
    with pytest.raises(egl.InputError, match=r"'batch' expected dict batches with key 'shortcut'.*groups='domain'"):
        recipes.group_dro(_model(), groups="shortcut").compute_phase("classifier", _batch(0), 0)
    with pytest.raises(egl.InputError, match=r"'max_groups' expected at least 12 \(\(class, shortcut\) pairs for 3 "
                                             r"classes\), got 8.*max_groups=12"):
        recipes.group_dro(_model(), groups="shortcut", max_groups=8).compute_phase(
            "classifier", _batch(0, shortcut=torch.zeros(12, dtype=torch.long)), 0)
    with pytest.raises(egl.InputError, match=r"'batch shortcut' expected values in \[-1, 2\], got values in "
                                             r"\[-2, 0\]"):
        recipes.group_dro(_model(), groups="shortcut").compute_phase(
            "classifier", _batch(0, shortcut=torch.tensor([-2] + [0] * 11)), 0)
    with pytest.raises(egl.InputError, match=r"'batch domain' expected values in \[0, 1\].*Raise max_groups \(now 6\)"
                                             r".*keeps 3 per domain"):
        recipes.group_dro(_model(), groups="domain_class", max_groups=6).compute_phase(
            "classifier", _batch(0, domain=torch.full((12,), 2)), 0)
    with pytest.raises(egl.InputError, match=r"'batch shortcut' expected an integer tensor of shape \[12\]"):
        recipes.as_batch(_batch(0, shortcut=torch.zeros(12)))


def test_a_bad_domain_in_fit_is_named_before_the_optimizer_steps() -> None:
    """The range check is deferred (read with the loss terms); the weights must not step."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, K))
    before = [p.detach().clone() for p in model.parameters()]
    recipe = recipes.group_dro(model, max_groups=4)
    batch = {"image": torch.randn(6, 3, 4, 4), "label": torch.arange(6) % K, "domain": torch.tensor([0, 1, 2, 3, 4, 0])}
    with pytest.raises(egl.InputError, match=r"'batch domain' expected values in \[0, 3\], got values in \[0, 4\]"):
        recipe.fit([batch], 1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_as_batch_reads_shortcut_labels_and_moves_them() -> None:
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    batch = recipes.as_batch({"image": x, "label": y, "shortcut": torch.tensor([-1, 1, 0, 2], dtype=torch.int32)})
    assert batch.shortcut is not None and batch.shortcut.dtype == torch.long
    assert batch.to("cpu").shortcut.tolist() == [-1, 1, 0, 2]
    assert recipes.as_batch((x, y)).shortcut is None and recipes.as_batch({"image": x, "label": y}).shortcut is None
    with pytest.raises(egl.InputError, match=r"'batch shortcut' expected an integer tensor of shape \[4\].*got a "
                                             r"torch.bool"):
        recipes.as_batch({"image": x, "label": y, "shortcut": torch.ones(4, dtype=torch.bool)})


def test_a_refused_step_is_named_and_leaves_the_group_weights_as_they_were() -> None:
    """A shortcut out of range in fit gave an IndexError from index_add (the check is deferred; the
    ids were not clamped), and a refused step moved the weights all the same."""
    recipe = recipes.group_dro(nn.Sequential(nn.Flatten(), nn.Linear(48, K)), groups="shortcut")
    good = {"image": torch.randn(6, 3, 4, 4), "label": torch.arange(6) % K,
            "shortcut": torch.zeros(6, dtype=torch.long)}
    recipe.fit([good], 1, progress=False)
    before = recipe.log_q.clone()
    bad = {**good, "shortcut": torch.tensor([-3, 0, 0, 0, 0, 0])}
    with pytest.raises(egl.InputError, match=r"'batch shortcut' expected values in \[-1, 2\], got values in \[-3, 0\]"):
        recipe.fit([bad], 1, progress=False)
    assert torch.equal(recipe.log_q, before)
    nan = {**good, "image": good["image"].clone()}
    nan["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(recipes.NonFiniteLossError):
        recipe.fit([nan], 1, progress=False)
    assert torch.equal(recipe.log_q, before) and torch.isfinite(recipe.log_q).all()
