"""egl.regularizers.mixup_consistency / MixupConsistency / same_class_pairs: ALIGN's L_reg."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import NUM_CLASSES, make_model

import egl
from egl.explainers import GradCAM
from egl.regularizers import MixupConsistency, MixupTerms, mixup_consistency, same_class_pairs

Setup = tuple[torch.nn.Module, torch.Tensor, torch.Tensor]


# -- pairing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_same_class_pairs_contract(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (17,), generator=g)
    target[-1] = 9  # a class alone in the batch
    partner = same_class_pairs(target, generator=g)
    assert partner.dtype == torch.long and partner.shape == target.shape
    assert sorted(partner.tolist()) == list(range(17))  # a permutation
    assert torch.equal(target[partner], target)  # same class
    counts = torch.bincount(target)
    for i in range(17):
        if counts[target[i]] >= 2:
            assert partner[i] != i
        else:
            assert partner[i] == i


def test_same_class_pairs_all_singletons_and_one_class() -> None:
    assert same_class_pairs(torch.tensor([3, 1, 0])).tolist() == [0, 1, 2]
    p = same_class_pairs(torch.zeros(2, dtype=torch.long))
    assert p.tolist() == [1, 0]


def test_same_class_pairs_generator_is_reproducible() -> None:
    t = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    a = same_class_pairs(t, generator=torch.Generator().manual_seed(3))
    b = same_class_pairs(t, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# -- functional -------------------------------------------------------------------------------
def _functional_inputs(b: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return dict(
        saliency=torch.rand(b, 1, 6, 6, generator=g),
        saliency_mixed=torch.rand(b, 1, 6, 6, generator=g),
        logits_mixed=torch.randn(b, NUM_CLASSES, generator=g),
        target=torch.tensor([0, 1, 0, 1]),
        beta=torch.rand(b, generator=g),
        partner=torch.tensor([2, 3, 0, 1]),
    )


def test_functional_hand_computed_terms() -> None:
    d = _functional_inputs()
    terms = mixup_consistency(**d, weights=(2.0, 0.5, 3.0))
    assert isinstance(terms, MixupTerms)
    b = d["beta"].view(-1, 1, 1, 1)
    mixed_target = b * d["saliency"] + (1 - b) * d["saliency"][d["partner"]]
    cons = (mixed_target - d["saliency_mixed"]).abs().mean()
    ce = F.cross_entropy(d["logits_mixed"], d["target"])
    sp = d["saliency_mixed"].abs().mean()
    torch.testing.assert_close(terms.consistency, cons)
    torch.testing.assert_close(terms.ce, ce)
    torch.testing.assert_close(terms.sparsity, sp)
    torch.testing.assert_close(terms.total, 2.0 * cons + 0.5 * ce + 3.0 * sp)


def test_functional_zero_consistency_at_beta_zero_and_one() -> None:
    d = _functional_inputs()
    d["beta"] = torch.ones(4)
    d["saliency_mixed"] = d["saliency"].clone()
    assert float(mixup_consistency(**d).consistency) == 0.0
    d["beta"] = torch.zeros(4)
    d["saliency_mixed"] = d["saliency"][d["partner"]]
    assert float(mixup_consistency(**d).consistency) == 0.0


def test_functional_reduction_none_is_per_sample() -> None:
    d = _functional_inputs()
    terms = mixup_consistency(**d, reduction="none")
    for t in terms:
        assert t.shape == (4,)
    torch.testing.assert_close(terms.ce, F.cross_entropy(d["logits_mixed"], d["target"], reduction="none"))
    torch.testing.assert_close(mixup_consistency(**d, reduction="sum").total, terms.total.sum())


def test_functional_errors() -> None:
    d = _functional_inputs()
    with pytest.raises(egl.InputError, match=r"mixup_consistency: 'saliency' expected a 4-D tensor"):
        mixup_consistency(**{**d, "saliency": d["saliency"][:, 0]})
    with pytest.raises(egl.InputError, match=r"'logits_mixed' expected a 2-D tensor of shape \[B, K\]"):
        mixup_consistency(**{**d, "logits_mixed": d["logits_mixed"][0]})
    with pytest.raises(egl.InputError, match=r"expected the same batch size as 'saliency' \(4\).*beta=3"):
        mixup_consistency(**{**d, "beta": d["beta"][:3]})
    msg = r"'saliency_mixed' expected the shape of 'saliency' \[4, 1, 6, 6\], got \[4, 1, 3, 3\]"
    with pytest.raises(egl.InputError, match=msg):
        mixup_consistency(**{**d, "saliency_mixed": d["saliency_mixed"][..., :3, :3]})
    with pytest.raises(egl.InputError, match=r"'reduction' expected one of"):
        mixup_consistency(**d, reduction="avg")


def test_functional_batch_error_names_the_mismatched_argument() -> None:
    d = _functional_inputs()
    with pytest.raises(egl.InputError, match=r"'beta' expected the same batch size as 'saliency' \(4\), got batch size 3"):
        mixup_consistency(**{**d, "beta": d["beta"][:3]})


# -- module -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup() -> Setup:
    model = make_model("test_resnet")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 64, 64, generator=g)
    t = torch.tensor([0, 1, 0, 1, 2, 0])
    return model, x, t


def test_module_defaults_and_registry() -> None:
    reg = egl.create("regularizer", "mixup_consistency")
    assert isinstance(reg, MixupConsistency)
    assert reg.alpha == 0.2 and reg.weights == (1.0, 1.0, 1.0) and reg.inputs == "explanation"
    assert "alpha=0.2" in repr(reg)


@pytest.mark.parametrize("value", [1.0, 0.0])
def test_module_consistency_exactly_zero_at_beta_extremes(setup: Setup, value: float) -> None:
    model, x, t = setup
    reg = MixupConsistency()
    terms = reg.terms(GradCAM(model), x, t, beta=torch.full((6,), value), create_graph=False)
    assert float(terms.consistency) == 0.0
    assert float(terms.ce) > 0 and float(terms.sparsity) > 0


def test_module_total_is_weighted_sum_and_forward_matches_terms(setup: Setup) -> None:
    model, x, t = setup
    reg = MixupConsistency(weights=(2.0, 0.5, 3.0))
    cam = GradCAM(model)
    torch.manual_seed(5)
    terms = reg.terms(cam, x, t, create_graph=False)
    torch.testing.assert_close(terms.total, 2.0 * terms.consistency + 0.5 * terms.ce + 3.0 * terms.sparsity)
    torch.manual_seed(5)
    torch.testing.assert_close(reg(cam, x, t, create_graph=False), terms.total)


def test_module_equals_functional_with_fixed_draws(setup: Setup) -> None:
    model, x, t = setup
    reg = MixupConsistency()
    cam = GradCAM(model)
    beta = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.7, 0.2])
    partner = same_class_pairs(t, generator=torch.Generator().manual_seed(0))
    terms = reg.terms(cam, x, t, beta=beta, partner=partner, create_graph=False)
    sal = cam(x, t)
    b = beta.view(-1, 1, 1, 1)
    mixed = cam.explain(b * x + (1 - b) * x[partner], t)
    ref = mixup_consistency(sal, mixed.saliency, mixed.logits, t, beta, partner)
    for got, want in zip(terms, ref):
        torch.testing.assert_close(got, want)


def test_module_reuses_given_saliency(setup: Setup) -> None:
    model, x, t = setup
    reg = MixupConsistency()
    beta = torch.ones(6)
    fake = torch.zeros(6, 1, 64, 64)
    terms = reg.terms(GradCAM(model), x, t, fake, beta=beta, create_graph=False)
    # Φ(x̃) = Φ(x) is not zero, so comparing against the given zeros gives its mean
    torch.testing.assert_close(terms.consistency, terms.sparsity)


def test_module_gradients_reach_model_parameters() -> None:
    model = make_model("test_resnet", eval_mode=False)
    x = torch.randn(4, 3, 64, 64)
    t = torch.tensor([0, 0, 1, 1])
    torch.manual_seed(0)
    loss = MixupConsistency()(GradCAM(model), x, t)
    assert model.training  # the explainer did not switch modes
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    assert float(grads["fc.weight"].abs().sum()) > 0
    assert sum(float(g.abs().sum()) for n, g in grads.items() if not n.startswith("fc.")) > 0


def test_module_errors(setup: Setup) -> None:
    model, x, t = setup
    for bad in (0, 0.0, -1.0, float("nan"), float("inf"), True, "0.2"):
        with pytest.raises(egl.InputError, match=r"MixupConsistency: 'alpha' expected a finite number > 0, got"):
            MixupConsistency(alpha=bad)  # type: ignore[arg-type]
    for bad in ((1.0, 1.0), (float("nan"), 1, 1), (-1, 1, 1), ("a", 1, 1), None, (True, 1, 1)):
        with pytest.raises(egl.InputError, match=r"'weights' expected 3 finite numbers >= 0 \(consistency, ce, "
                                                 r"sparsity\), got"):
            MixupConsistency(weights=bad)  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"mixup_consistency: 'weights' expected 3 finite numbers"):
        mixup_consistency(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.randn(2, 3), torch.tensor([0, 0]),
                          torch.rand(2), torch.tensor([1, 0]), weights=(1, float("inf"), 1))
    with pytest.raises(egl.InputError, match=r"MixupConsistency: 'reduction' expected one of"):
        MixupConsistency(reduction="avg")
    reg = MixupConsistency()
    with pytest.raises(egl.InputError, match=r"MixupConsistency: 'target' expected the true class of every sample, got None"):
        reg(GradCAM(model), x, None)
    with pytest.raises(egl.InputError, match=r"MixupConsistency: 'x' expected a 4-D tensor"):
        reg(GradCAM(model), x[0], t)
    with pytest.raises(egl.InputError, match=r"'target' expected one class index per sample \(shape \[6\]\)"):
        reg(GradCAM(model), x, t[:3])


def test_functional_names_targets_draws_and_partners_of_the_wrong_kind() -> None:
    """A bool or [B, 1] partner indexed silently wrong rows (a bool index selects, it does not name);
    a float or list target, a list or 0-D beta were raw torch or Python errors."""
    d = _functional_inputs()
    cases = [
        ("partner", torch.ones(4, dtype=torch.bool), r"'partner' expected an integer tensor of partner indices"),
        ("partner", d["partner"][:, None], r"'partner' expected a 1-D tensor of shape \[B\]"),
        ("partner", d["partner"].float(), r"'partner' expected an integer tensor"),
        ("partner", [2, 3, 0, 1], r"'partner' expected a torch.Tensor"),
        ("target", d["target"].float(), r"'target' expected an integer tensor of class indices"),
        ("target", d["target"][:, None], r"'target' expected a 1-D tensor of shape \[B\]"),
        ("target", [0, 1, 0, 1], r"'target' expected a torch.Tensor"),
        ("beta", torch.tensor(0.5), r"'beta' expected a 1-D tensor of shape \[B\]"),
        ("beta", d["beta"][:, None], r"'beta' expected a 1-D tensor of shape \[B\]"),
        ("beta", d["beta"].tolist(), r"'beta' expected a torch.Tensor"),
    ]
    for arg, bad, msg in cases:
        with pytest.raises(egl.InputError, match=r"mixup_consistency: " + msg):
            mixup_consistency(**{**d, arg: bad})


def test_functional_takes_int32_targets_and_partners() -> None:
    d = _functional_inputs()
    ref = mixup_consistency(**d)
    got = mixup_consistency(**{**d, "target": d["target"].int(), "partner": d["partner"].int()})
    torch.testing.assert_close(got.total, ref.total)


def test_same_class_pairs_refuses_labels_that_are_not_integers() -> None:
    """Float labels broke the class sort (a sample could pair with itself though it had a classmate)."""
    for bad, msg in ((torch.tensor([0.0, 0.3, 0.0, 0.3]), r"'target' expected an integer tensor of class indices"),
                     (torch.tensor([True, False]), r"'target' expected an integer tensor"),
                     (torch.tensor([[0, 1]]), r"'target' expected a 1-D tensor of shape \[B\]"),
                     ([0, 0, 1], r"'target' expected a torch.Tensor")):
        with pytest.raises(egl.InputError, match=r"same_class_pairs: " + msg):
            same_class_pairs(bad)  # type: ignore[arg-type]


def test_mix_names_integer_images_and_draws_that_do_not_fit() -> None:
    """Integer images truncated beta to 0 (x̃ = x[partner], silently); a beta of another length, a
    float partner or a list target were raw torch errors."""
    reg, x, y = MixupConsistency(), torch.randn(2, 3, 8, 8), torch.tensor([1, 1])
    with pytest.raises(egl.InputError, match=r"MixupConsistency.mix: 'x' expected a floating-point tensor"):
        reg.mix((x * 10).long(), y, beta=torch.full((2,), 0.5))
    with pytest.raises(egl.InputError, match=r"mix: 'beta' expected the same batch size as 'x' \(2\), got batch size"):
        reg.mix(x, y, beta=torch.rand(3))
    with pytest.raises(egl.InputError, match=r"mix: 'partner' expected an integer tensor"):
        reg.mix(x, y, partner=torch.tensor([1.0, 0.0]))
    with pytest.raises(egl.InputError, match=r"mix: 'target' expected a torch.Tensor"):
        reg.mix(x, [1, 1])  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"mix: 'target' expected the same batch size as 'x' \(2\)"):
        reg.mix(x, torch.tensor([1, 1, 1]))
    mixed, beta, partner = reg.mix(x, y, beta=torch.tensor([1.0, 0.25]), partner=torch.tensor([1, 0]))
    torch.testing.assert_close(mixed, torch.stack([x[0], 0.25 * x[1] + 0.75 * x[0]]))


def test_terms_names_a_non_explainer_and_a_saliency_of_another_batch(setup: Setup) -> None:
    model, x, t = setup
    reg = MixupConsistency()
    with pytest.raises(egl.InputError, match=r"MixupConsistency: 'explainer' expected an egl explainer"):
        reg.terms("grad_cam", x, t)  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"MixupConsistency: 'saliency' expected the same batch size as 'x' \(6\)"):
        reg.terms(GradCAM(model), x, t, torch.rand(3, 1, 2, 2), create_graph=False)


def test_uint8_partners_are_refused_and_uint8_labels_taken() -> None:
    """As an index a uint8 tensor selects rows (like a bool mask): partner indices must not be uint8;
    labels may (datasets store them so)."""
    y = torch.tensor([0, 1, 0, 1], dtype=torch.uint8)
    assert same_class_pairs(y, torch.Generator().manual_seed(0)).dtype == torch.int64
    s = torch.rand(4, 1, 4, 4)
    with pytest.raises(egl.InputError, match=r"'partner' expected an integer tensor of partner indices"):
        mixup_consistency(s, s, torch.randn(4, 3), y.long(), torch.rand(4), torch.tensor([2, 3, 0, 1], dtype=torch.uint8))
    terms = mixup_consistency(s, s, torch.randn(4, 3), y, torch.rand(4), torch.tensor([2, 3, 0, 1]))
    assert torch.isfinite(terms.total)


def test_detach_target_stops_the_consistency_gradient_through_the_unmixed_maps() -> None:
    g = torch.Generator().manual_seed(0)
    sal = torch.rand(4, 1, 4, 4, generator=g).requires_grad_(True)
    mixed = torch.rand(4, 1, 4, 4, generator=g).requires_grad_(True)
    logits, y = torch.randn(4, NUM_CLASSES, generator=g), torch.tensor([0, 0, 1, 1])
    beta, partner = torch.full((4,), 0.3), torch.tensor([1, 0, 3, 2])
    default = mixup_consistency(sal, mixed, logits, y, beta, partner, weights=(1.0, 0.0, 0.0))
    detached = mixup_consistency(sal, mixed, logits, y, beta, partner, weights=(1.0, 0.0, 0.0), detach_target=True)
    torch.testing.assert_close(default.total, detached.total)  # the same value
    (g_default,) = torch.autograd.grad(default.total, sal)
    assert float(g_default.abs().sum()) > 0  # default: the unmixed maps are trained too (DRE's)
    g_sal, g_mixed = torch.autograd.grad(detached.total, [sal, mixed], allow_unused=True)
    assert g_sal is None and float(g_mixed.abs().sum()) > 0
    reg = MixupConsistency(detach_target=True)
    assert reg.detach_target and "detach_target=True" in repr(reg)
    with pytest.raises(egl.InputError, match="'detach_target'"):
        MixupConsistency(detach_target="yes")
