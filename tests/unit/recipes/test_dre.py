"""DRE recipe: the explanation it trains on, its terms against a hand computation, pairing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import NUM_CLASSES, make_model

import egl
from egl.explainers import grad_cam
from egl.recipes.dre import DRE, class_permutation, dre, dre_terms

TERMS = {"ce", "consistency", "sparsity", "mix_ce", "total"}


def _batch(n: int = 6, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.tensor([0, 1, 2, 0, 1, 0, 2, 0])[:n]


def _fix(recipe: DRE, lam: torch.Tensor, partner: torch.Tensor | None = None) -> None:
    recipe.sample_lam = lambda n, device: lam.to(device)  # type: ignore[method-assign]
    if partner is not None:
        recipe.sample_partner = lambda y: partner  # type: ignore[method-assign]


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_three_steps_on_tiny_models(name: str) -> None:
    kwargs = {"output_stride": 16} if name == "test_resnet" else {}
    recipe = dre(make_model(name, eval_mode=False, **kwargs))
    logs = recipe.fit([_batch()], steps=3, seed=0, progress=False)
    assert len(logs) == 3 and set(logs[0]) == {"step"} | {f"classifier/{t}" for t in TERMS}
    assert all(torch.isfinite(torch.tensor(v)) for row in logs for v in row.values())


def test_explanation_is_signed_constant_weight_grad_cam_at_feature_resolution() -> None:
    recipe = dre(make_model("test_resnet", output_stride=16))
    cam = recipe.explainer
    assert not cam.relu and cam.detach_weights and not cam.upsample and cam.normalize
    x, y = _batch()
    sal = cam(x, y)
    assert sal.shape == (6, 1, 4, 4)
    signed = grad_cam(recipe.model, x, y, upsample=False, normalize=False, relu=False)
    assert signed.min() < 0  # negative evidence is kept, then min-max maps it into [0, 1]
    assert torch.allclose(sal, egl.explainers.minmax_normalize(signed), atol=1e-6)


@pytest.mark.parametrize("class_mean", ["all", "present"])
def test_terms_match_a_hand_computation(class_mean: str) -> None:
    model = make_model("test_resnet", output_stride=16)
    recipe = dre(model, class_mean=class_mean).eval()  # the recipe sets the model's mode from its own
    x, y = _batch(8)  # classes: 0 x4, 1 x2, 2 x2
    lam = torch.tensor([0.2, 0.9, 0.5, 0.7, 0.1, 0.35, 0.6, 0.95])
    partner = torch.tensor([3, 4, 6, 7, 1, 0, 2, 5])
    assert torch.equal(y[partner], y)
    _fix(recipe, lam, partner)
    terms = recipe.compute_phase("classifier", (x, y), 0)

    def cam(inp: torch.Tensor) -> torch.Tensor:
        return grad_cam(model, inp, y, upsample=False, relu=False)

    lv = lam.view(-1, 1, 1, 1)
    x_mix = lv * x + (1 - lv) * x[partner]
    g, g_mix = cam(x), cam(x_mix)
    logits_mix = model(x_mix)
    per_class = {"consistency": [], "sparsity": [], "mix_ce": []}
    for c in (0, 1, 2):
        idx = (y == c).nonzero()[:, 0]
        target = lv[idx] * g[idx] + (1 - lv[idx]) * g[partner[idx]]
        per_class["consistency"].append((g_mix[idx] - target).abs().mean())
        per_class["sparsity"].append((g[idx].abs().mean() + g_mix[idx].abs().mean()) / 2)  # authors: averaged
        per_class["mix_ce"].append(F.cross_entropy(logits_mix[idx], y[idx]))
    divisor = NUM_CLASSES if class_mean == "all" else 3  # the authors' / num_classes, or the 3 present
    assert NUM_CLASSES > 3
    want = {k: sum(v) / divisor for k, v in per_class.items()}
    want["ce"] = F.cross_entropy(model(x), y)
    want["total"] = want["ce"] + want["consistency"] + 0.5 * want["sparsity"] + 0.1 * want["mix_ce"]
    assert set(terms) == TERMS
    for k in TERMS:
        assert torch.allclose(terms[k], want[k], rtol=1e-4, atol=1e-6), k
    assert want["consistency"] > 1e-3  # not trivially zero


@pytest.mark.parametrize("train", [False, True])
def test_consistency_is_zero_when_nothing_is_mixed(train: bool) -> None:
    recipe = dre(make_model("test_resnet", output_stride=16, eval_mode=not train)).train(train)
    x, y = _batch(6)
    _fix(recipe, torch.ones(6))  # λ = 1: x̃ = x whatever the partner
    terms = recipe.compute_phase("classifier", (x, y), 0)
    assert float(terms["consistency"].detach()) < 1e-6
    _fix(recipe, torch.zeros(6), torch.arange(6))  # λ = 0 with every sample its own partner
    assert float(recipe.compute_phase("classifier", (x, y), 0)["consistency"].detach()) < 1e-6


def test_regularisers_reach_the_trunk_not_the_linear_head() -> None:
    # Channel weights are constants: a linear head's weights enter the maps only through them.
    model = make_model("test_resnet", output_stride=16)
    recipe = dre(model).eval()
    _fix(recipe, torch.full((6,), 0.5))
    terms = recipe.compute_phase("classifier", _batch(6), 0)
    (terms["consistency"] + terms["sparsity"]).backward()
    assert model.fc.weight.grad is None
    assert model.conv1[0].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    terms = recipe.compute_phase("classifier", _batch(6), 0)
    terms["total"].backward()  # the CE terms do train the head
    assert model.fc.weight.grad.abs().sum() > 0


def test_class_permutation_stays_within_classes() -> None:
    y = torch.tensor([2, 0, 1, 0, 2, 0, 0, 5])
    seen = set()
    for seed in range(20):
        p = class_permutation(y, torch.Generator().manual_seed(seed))
        assert sorted(p.tolist()) == list(range(8)) and torch.equal(y[p], y)
        assert p[2] == 2 and p[7] == 7  # alone in their class
        seen.add(tuple(p.tolist()))
    assert len(seen) > 5  # random, and self-pairs are allowed (uniform over permutations)


def test_dre_terms_checks_shapes() -> None:
    s = torch.rand(4, 1, 4, 4)
    with pytest.raises(egl.InputError, match="'lam' expected the same batch size"):
        dre_terms(s, s, torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.rand(3), torch.arange(4))


def test_needs_no_domains_and_checks_weights() -> None:
    assert not DRE.needs_domains
    with pytest.raises(egl.InputError, match="'sparsity_weight'"):
        dre(make_model("test_resnet"), sparsity_weight=-1.0)
    with pytest.raises(egl.InputError, match="'alpha' expected a finite number > 0"):
        dre(make_model("test_resnet"), alpha=0)


def test_pairs_and_counts_classes_on_the_host_copy_of_the_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Labels that arrived on the CPU are paired and counted there (``.cpu()`` and ``unique`` on
    a GPU tensor would each wait for the device); the terms are those of the device labels."""
    import dataclasses

    from egl.recipes.batch import _HostCopy, as_batch

    x, y = _batch()
    b = as_batch((x, y))
    host = y.clone()  # stands for the CPU copy of labels that fit moved to a GPU
    moved = dataclasses.replace(b, _labels_host=_HostCopy.of(host, b.y))
    assert moved.labels_on_host() is host and dataclasses.replace(b, y=y.clone()).labels_on_host() is None
    seen = []
    unique, permutation = torch.unique, DRE.sample_partner
    monkeypatch.setattr(torch, "unique", lambda t, *a, **k: seen.append(t) or unique(t, *a, **k))
    monkeypatch.setattr(DRE, "sample_partner", lambda self, t: seen.append(t) or permutation(self, t))
    recipe = dre(make_model("test_resnet", eval_mode=False))
    torch.manual_seed(0)
    on_host = recipe.compute_phase("classifier", moved, 0)
    assert len(seen) == 2 and all(t is host for t in seen)
    seen.clear()
    torch.manual_seed(0)
    on_device = recipe.compute_phase("classifier", dataclasses.replace(b, _labels_host=None), 0)
    assert len(seen) == 2 and all(t is b.y for t in seen)
    for k in TERMS:
        assert torch.equal(on_host[k], on_device[k]), k
    with pytest.raises(egl.InputError, match=r"'class_mean' expected one of"):
        dre(make_model("test_resnet"), class_mean="mean")
