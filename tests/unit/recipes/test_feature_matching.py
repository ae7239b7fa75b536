"""CORAL and MMD recipes: the penalties against DomainBed's computation written out (one
minibatch per domain, features from the featurizer), the features read from the model's own
forward pass, and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model
from torch import nn

import egl
from egl import recipes
from egl.recipes.feature_matching import CORAL, MMD, MMD_GAMMAS, coral_distance, mmd_distances


def _batch(n: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 3,
            torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])[:n])


def _coral_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cent_x, cent_y = x - mean_x, y - mean_y
    cova_x = (cent_x.t() @ cent_x) / (len(x) - 1)
    cova_y = (cent_y.t() @ cent_y) / (len(y) - 1)
    return (mean_x - mean_y).pow(2).mean() + (cova_x - cova_y).pow(2).mean()


def _kernel_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    d = (x[:, None, :] - y[None, :, :]).pow(2).sum(-1)
    return sum(torch.exp(-g * d) for g in MMD_GAMMAS)


def _mmd_db(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _kernel_db(x, x).mean() + _kernel_db(y, y).mean() - 2 * _kernel_db(x, y).mean()


def _domainbed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, d: torch.Tensor, dist, gamma: float = 1.0):
    """DomainBed's ``AbstractMMD.update`` written out, one minibatch per domain."""
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    doms = torch.unique(d)
    objective = sum(F.cross_entropy(model.get_classifier()(feats[d == e]), y[d == e]) for e in doms) / len(doms)
    pairs = [(i, j) for i in range(len(doms)) for j in range(i + 1, len(doms))]
    penalty = sum(dist(feats[d == doms[i]], feats[d == doms[j]]) for i, j in pairs) / len(pairs)
    return objective, penalty, objective + gamma * penalty


@pytest.mark.parametrize("name, dist", [("coral", _coral_db), ("mmd", _mmd_db)])
@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_terms_match_domainbed(name: str, dist, arch: str) -> None:
    model = make_model(arch)
    x, y, d = _batch()
    with torch.no_grad():
        want = _domainbed(model, x, y, d, dist, gamma=0.5)
    terms = egl.create("recipe", name, model, penalty_weight=0.5).eval().compute_phase("classifier", (x, y, d), 0)
    for key, w in zip(("ce", "penalty", "total"), want):
        assert torch.allclose(terms[key], w, rtol=1e-4, atol=1e-7), key
    assert float(terms["penalty"]) > 0


def test_distances_against_their_definitions() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g) * 2 + 1
    assert torch.allclose(coral_distance(a, b), _coral_db(a, b))
    assert float(coral_distance(a, a)) == 0.0
    feats = torch.cat([a, b, torch.randn(3, 4, generator=g)]) * 0.3
    groups = [torch.arange(5), torch.arange(5, 12), torch.arange(12, 15)]
    got = mmd_distances(feats, groups)
    for i in range(3):
        assert abs(float(got[i, i])) < 1e-5
        for j in range(3):
            assert torch.allclose(got[i, j], _mmd_db(feats[groups[i]], feats[groups[j]]), rtol=1e-4, atol=1e-6)


def test_penalty_moves_the_features_and_reaches_the_trunk() -> None:
    for make in (recipes.coral, recipes.mmd):
        model = make_model("test_resnet")
        terms = make(model).compute_phase("classifier", _batch(), 0)
        terms["penalty"].backward()
        assert model.conv1[0].weight.grad.abs().sum() > 0
        assert model.fc.weight.grad is None  # the features are the head's input: the head takes no part


def test_domains_with_one_sample_leave_the_penalty_not_the_risk() -> None:
    model = make_model("test_resnet")
    x, y, _ = _batch(7)
    d = torch.tensor([0, 0, 0, 1, 1, 1, 2])  # domain 2: one image
    terms = recipes.coral(model).eval().compute_phase("classifier", (x, y, d), 0)
    with torch.no_grad():
        ce, penalty, _ = _domainbed(model, x[:6], y[:6], d[:6], _coral_db)
        logits = model(x)
    want_ce = (2 * ce + F.cross_entropy(logits[6:], y[6:])) / 3
    assert torch.allclose(terms["ce"], want_ce, rtol=1e-5) and torch.allclose(terms["penalty"], penalty, rtol=1e-4)
    lone = recipes.mmd(model).compute_phase("classifier", (x, y, torch.tensor([0, 0, 0, 0, 0, 0, 1])), 0)
    assert float(lone["penalty"]) == 0.0 and torch.isfinite(lone["total"])


def test_three_steps_train_and_log() -> None:
    for make in (recipes.coral, recipes.mmd):
        recipe = make(make_model("test_resnet", eval_mode=False), lr=1e-3)
        logs = recipe.fit([_batch(8)], steps=3, seed=0, progress=False)
        assert set(logs[0]) == {"step", "classifier/ce", "classifier/penalty", "classifier/total"}
        assert all(torch.isfinite(torch.tensor(v)) for row in logs for v in row.values())


class _Net(nn.Module):
    """A plain model without timm's get_classifier."""

    def __init__(self, twice: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.Linear(4, 3)
        self.twice = twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        return self.out(f) + self.out(f) if self.twice else self.out(f)


def test_a_named_classifier_serves_any_model() -> None:
    torch.manual_seed(0)
    net = _Net()
    x, y, d = _batch()
    terms = recipes.coral(net, classifier="out").compute_phase("classifier", (x, y, d), 0)
    feats = net.body(x)
    want = sum(_coral_db(feats[d == i], feats[d == j]) for i, j in ((0, 1), (0, 2), (1, 2))) / 3
    assert torch.allclose(terms["penalty"], want, rtol=1e-4, atol=1e-7)
    assert not net.out._forward_pre_hooks  # the hook lives for the pass only


def test_errors_name_the_classifier_argument() -> None:
    with pytest.raises(egl.InputError, match=r"egl.recipes.coral: 'classifier' expected a model with get_classifier"):
        recipes.coral(_Net())
    with pytest.raises(egl.InputError, match=r"'classifier' expected the name of a submodule.*'body.3', 'out'"):
        recipes.mmd(_Net(), classifier="fc")
    with pytest.raises(egl.InputError, match=r"'model' expected a classifier with a head.*get_classifier\(\) is Identity"):
        recipes.coral(_reset(make_model("test_resnet")))
    with pytest.raises(egl.InputError, match=r"'classifier' expected a Linear called once per forward pass.*2 calls"):
        recipes.coral(_Net(twice=True), classifier="out").compute_phase("classifier", _batch(), 0)
    with pytest.raises(egl.InputError, match=r"CORAL needs \(x, y, domain\) batches"):
        recipes.coral(make_model("test_resnet")).compute_phase("classifier", _batch()[:2], 0)
    for bad in ([], [0.1, -1.0], "wide", [float("nan")]):
        with pytest.raises(egl.InputError, match=r"egl.recipes.mmd: 'gammas' expected a non-empty list"):
            recipes.mmd(make_model("test_resnet"), gammas=bad)


def _reset(model: nn.Module) -> nn.Module:
    model.reset_classifier(0)
    return model


def test_distance_errors_are_named() -> None:
    with pytest.raises(egl.InputError, match=r"'a' expected at least 2 feature vectors"):
        coral_distance(torch.randn(1, 3), torch.randn(4, 3))
    with pytest.raises(egl.InputError, match=r"'b' expected 3 features per row"):
        coral_distance(torch.randn(2, 3), torch.randn(4, 5))
    with pytest.raises(egl.InputError, match=r"egl.recipes.mmd_distances: 'feats' expected"):
        mmd_distances(torch.randn(4), [torch.arange(2)])
    with pytest.raises(egl.InputError, match=r"'groups' expected non-empty 1-D integer index tensors.*position 1"):
        mmd_distances(torch.randn(4, 3), [torch.arange(2), torch.tensor([], dtype=torch.long)])


def test_registered_with_their_configs() -> None:
    model = make_model("test_resnet")
    assert isinstance(egl.create("recipe", "coral", model), CORAL)
    mmd = egl.create("recipe", "mmd", model, gammas=[1.0, 10.0])
    assert isinstance(mmd, MMD) and mmd.config()["gammas"] == [1.0, 10.0] and mmd.needs_domains


class _Keyword(nn.Module):
    """Calls its head by keyword, or on an unpooled map."""

    def __init__(self, pooled: bool = True) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)
        self.out = nn.Conv2d(4, 3, 1)
        self.pooled = pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        f = f.mean((2, 3), keepdim=True) if self.pooled else f
        return self.out(input=f).mean((2, 3))


def test_a_keyword_call_and_a_1x1_head_are_read_and_an_unpooled_map_is_refused() -> None:
    torch.manual_seed(0)
    x, y, d = _batch()
    net = _Keyword()
    terms = recipes.coral(net, classifier="out").compute_phase("classifier", (x, y, d), 0)
    feats = net.body(x).mean((2, 3))
    want = sum(_coral_db(feats[d == i], feats[d == j]) for i, j in ((0, 1), (0, 2), (1, 2))) / 3
    assert torch.allclose(terms["penalty"], want, rtol=1e-4, atol=1e-7)
    with pytest.raises(egl.InputError, match=r"'classifier' expected a module whose input holds one feature vector "
                                             r"per image \(\[9, D\], or \[9, D, 1, 1\]\).*unpooled map"):
        recipes.coral(_Keyword(pooled=False), classifier="out").compute_phase("classifier", (x, y, d), 0)
    with pytest.raises(egl.InputError, match=r"unpooled map or tokens"):  # a ViT's blocks: tokens
        recipes.mmd(make_model("test_vit"), classifier="blocks.0").compute_phase("classifier", (x, y, d), 0)


def test_the_hook_is_removed_when_the_forward_fails() -> None:
    net = _Net()
    recipe = recipes.coral(net, classifier="out")
    with pytest.raises(RuntimeError):
        recipe.compute_phase("classifier", (torch.randn(4, 5, 32, 32), torch.zeros(4, dtype=torch.long),
                                            torch.tensor([0, 0, 1, 1])), 0)  # 5 channels: the conv fails
    assert not net.out._forward_pre_hooks


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_penalties_are_float32_under_autocast(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = 150 * torch.randn(64, 32, generator=g), 150 * torch.randn(64, 32, generator=g) + 5
    want = coral_distance(a, b)
    with torch.autocast("cpu", dtype=dtype):
        got = coral_distance(a.to(dtype), b.to(dtype))
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert torch.allclose(got, coral_distance(a.to(dtype).float(), b.to(dtype).float()), rtol=1e-5)
    assert torch.allclose(got, want, rtol=0.05)
    feats = torch.randn(12, 8, generator=g)
    groups = [torch.arange(6), torch.arange(6, 12)]
    with torch.autocast("cpu", dtype=dtype):
        mmd = mmd_distances(feats, groups)
    assert mmd.dtype == torch.float32 and torch.allclose(mmd, mmd_distances(feats, groups), rtol=1e-5)
    model = make_model("test_resnet")
    x, y, d = _batch(8)
    with torch.autocast("cpu", dtype=dtype):
        terms = recipes.coral(model).eval().compute_phase("classifier", (x, y, d), 0)
    assert terms["penalty"].dtype == torch.float32 and torch.isfinite(terms["total"])


def test_a_float64_model_keeps_float64() -> None:
    model = make_model("test_resnet").double()
    x, y, d = _batch(8)
    terms = recipes.mmd(model).eval().compute_phase("classifier", (x.double(), y, d), 0)
    assert terms["penalty"].dtype == torch.float64 and terms["ce"].dtype == torch.float64
