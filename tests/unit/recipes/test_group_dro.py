"""GroupDRO: the online group weights and loss against a float64 reference of Sagawa et al.'s
Algorithm 1 (groups present in the batch renormalised), each grouping's ids, and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import egl
from egl import recipes
from egl.experiments.sources import TensorDictDataset

K = 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, K)).double()


def _batch(seed: int, n: int = 12, **extra: torch.Tensor) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64),
            "label": torch.randint(K, (n,), generator=g), **extra}


def _reference(model: nn.Module, batches: list[dict[str, torch.Tensor]], ids: list[torch.Tensor], eta: float,
               adjust: dict[int, float] | None = None) -> tuple[list[torch.Tensor], list[float], torch.Tensor]:
    """Per batch: L_g, q_g <- q_g exp(eta (L_g + adjust_g)) for the groups present and
    q_g <- q_g exp(eta adjust_g) for the training groups absent (Sagawa et al.'s code: an absent
    group's loss is 0), loss = sum_g q_g L_g / sum_g q_g over those present; gradients of the
    last loss with respect to the model's weight."""
    adjust = adjust or {}
    q: dict[int, float] = {}
    losses, grads = [], None
    for batch, gid in zip(batches, ids):
        model.zero_grad()
        per = nn.functional.cross_entropy(model(batch["image"]), batch["label"], reduction="none")
        groups = sorted(set(gid.tolist()))
        means = {g: per[gid == g].mean() for g in groups}
        for g in groups:
            q[g] = q.get(g, 1.0) * float(torch.exp(eta * (means[g].detach() + adjust.get(g, 0.0))))
        for g, a in adjust.items():
            if g not in means:
                q[g] = q.get(g, 1.0) * float(torch.exp(torch.tensor(eta * a, dtype=torch.float64)))
        total = sum(q[g] * means[g] for g in groups) / sum(q[g] for g in groups)
        total.backward()
        losses.append(total.detach())
        grads = model[1].weight.grad.clone()
    norm = sum(q.values())
    return losses, [q.get(g, 0.0) / norm for g in range(max(q) + 1)], grads


def _batches() -> list[dict[str, torch.Tensor]]:
    batches = [_batch(s, domain=torch.randint(3, (12,), generator=torch.Generator().manual_seed(10 + s)),
                      shortcut=torch.randint(-1, K, (12,), generator=torch.Generator().manual_seed(20 + s)))
               for s in range(4)]
    batches[1] = {k: v[:5] for k, v in batches[1].items()}  # a batch missing some groups
    return batches


def _ids(batches: list[dict[str, torch.Tensor]], groups: str) -> list[torch.Tensor]:
    return {"domain": [b["domain"] for b in batches], "class": [b["label"] for b in batches],
            "domain_class": [b["domain"] * K + b["label"] for b in batches],
            "shortcut": [b["label"] * (K + 1) + b["shortcut"] + 1 for b in batches]}[groups]


def _dataset(batches: list[dict[str, torch.Tensor]]) -> TensorDictDataset:
    return TensorDictDataset({k: torch.cat([b[k] for b in batches]) for k in batches[0]})


@pytest.mark.parametrize("adjustment", [0.0, 2.0])
@pytest.mark.parametrize("groups", ["domain", "class", "domain_class", "shortcut"])
def test_loss_weights_and_gradients_match_the_reference(groups: str, adjustment: float) -> None:
    """With ``adjustment=C`` the weights' update reads L_g + C / sqrt(n_g), n_g counted on the
    training data (Sagawa et al.'s generalisation adjustment); the loss reads L_g."""
    batches = _batches()
    ids = _ids(batches, groups)
    every = torch.cat(ids)
    adjust = {g: adjustment / float((every == g).sum()) ** 0.5 for g in set(every.tolist())}
    eta = 0.5  # large enough for the weights to tilt visibly in four steps
    losses, weights, grad = _reference(_model(), batches, ids, eta, adjust)
    recipe = recipes.group_dro(_model(), groups=groups, eta=eta, max_groups=64, adjustment=adjustment)
    sizes = recipe.set_group_sizes(_dataset(batches), num_classes=K)
    assert sizes.tolist() == torch.bincount(every, minlength=64).float().tolist()
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


def test_the_adjustment_tilts_the_weights_towards_small_groups() -> None:
    """Two groups with equal losses: without the adjustment their weights stay equal; with it the
    group of 4 training images gains on the group of 100 (C / sqrt(n): 1.0 against 0.2)."""
    batch = _batch(0, n=8, domain=torch.tensor([0, 1] * 4))
    batch["image"][1::2] = batch["image"][0::2]  # the same images and labels in both groups
    batch["label"][1::2] = batch["label"][0::2]
    data = TensorDictDataset({"image": torch.zeros(104, 3, 4, 4), "label": torch.zeros(104, dtype=torch.long),
                              "domain": torch.tensor([0] * 100 + [1] * 4)})
    for adjustment, expect_tilt in ((0.0, False), (2.0, True)):
        recipe = recipes.group_dro(_model(), eta=1.0, adjustment=adjustment).train()
        recipe.set_group_sizes(data)
        for step in range(3):
            recipe.compute_phase("classifier", batch, step)
        w = recipe.weights
        if expect_tilt:
            torch.testing.assert_close(w[1] / w[0], torch.exp(torch.tensor(3 * (2.0 / 2 - 2.0 / 10))))
        else:
            torch.testing.assert_close(w[1], w[0])


def test_group_sizes_default_to_the_models_classes_and_are_not_checkpointed() -> None:
    import timm

    model = timm.create_model("test_resnet", num_classes=3)
    recipe = recipes.group_dro(model, groups="shortcut", adjustment=1.0)
    data = TensorDictDataset({"image": torch.zeros(5, 3, 8, 8), "label": torch.tensor([0, 0, 1, 2, 2]),
                              "shortcut": torch.tensor([0, 1, -1, 2, 2])})
    sizes = recipe.set_group_sizes(data)
    assert {i: int(v) for i, v in enumerate(sizes.tolist()) if v} == {1: 1, 2: 1, 4: 1, 11: 2}
    assert "group_sizes" not in recipe.state_dict() and "log_q" in recipe.state_dict()
    assert recipe.needs_domains is False and recipes.group_dro(model).needs_domains is True


def test_adjustment_errors_name_the_fix() -> None:
    data = _dataset(_batches())
    recipe = recipes.group_dro(_model(), groups="shortcut", adjustment=1.0).train()
    batch = _batches()[0]
    with pytest.raises(egl.InputError, match=r"'adjustment' expected the training set's group sizes.*got none "
                       r"set.*recipe.set_group_sizes\(train_set\)"):
        recipe.compute_phase("classifier", batch, 0)
    with pytest.raises(egl.InputError, match=r"set_group_sizes: 'num_classes' expected .*got None.*Pass num_classes"):
        recipe.set_group_sizes(data)
    with pytest.raises(egl.InputError, match=r"set_group_sizes: 'dataset' expected values in \[0, 1\].*labels: "
                       r"classes are 0 .. 1"):
        recipe.set_group_sizes(data, num_classes=2)
    recipe.set_group_sizes(data, num_classes=4)
    with pytest.raises(egl.InputError, match=r"'batch' expected logits of the 4 classes the group sizes were "
                       r"counted with, got 3 classes"):
        recipe.compute_phase("classifier", batch, 0)
    small = TensorDictDataset({k: v[:3] for k, v in data.tensors.items()})
    recipe.set_group_sizes(small, num_classes=K)
    before = recipe.log_q.clone()
    with pytest.raises(egl.InputError, match=r"'batch' expected groups that the training set's group sizes hold, "
                       r"got \d+ group\(s\) with no training image counted \(first id \d+\).*on the data you train on"):
        recipe.compute_phase("classifier", batch, 0)
    with pytest.raises(egl.InputError, match=r"with no training image counted"):  # deferred: refused, weights kept
        recipe.training_step(batch, 0, recipe.configure_optimizers())
    torch.testing.assert_close(recipe.log_q, before)
    plain = TensorDictDataset({"image": torch.zeros(4, 3, 4, 4), "label": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(egl.InputError, match=r"set_group_sizes: 'groups' expected a grouping whose keys the items "
                       r"carry \(it needs \['label', 'shortcut'\]\), got items of TensorDictDataset with keys "
                       r"\['image', 'label'\]\. Use groups='class'"):
        recipe.set_group_sizes(plain, num_classes=K)
    with pytest.raises(egl.InputError, match=r"set_group_sizes: 'max_groups' expected at least 20"):
        recipes.group_dro(_model(), groups="shortcut", max_groups=8).set_group_sizes(data, num_classes=4)
    with pytest.raises(egl.InputError, match=r"'adjustment' expected a finite number >= 0, got -1"):
        recipes.group_dro(_model(), adjustment=-1)
