"""SGT recipe: masking math, loss against a hand computation, gradient hygiene, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model

import egl
from egl.recipes.erm import erm
from egl.recipes.sgt import SGT, sgt, sgt_mask, sgt_replace


def _batch(n: int = 4, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 3


def _hand_masked(x: torch.Tensor, sal: torch.Tensor, k: int) -> torch.Tensor:
    """Per image: the k lowest-saliency pixels take the image's channel means (a plain loop)."""
    out = x.clone()
    w = x.shape[3]
    for b in range(x.shape[0]):
        for i in sal[b, 0].flatten().argsort()[:k].tolist():
            out[b, :, i // w, i % w] = x[b].mean(dim=(1, 2))
    return out


@pytest.mark.parametrize(("name", "kwargs"), [("test_resnet", {}),
                                              ("test_vit", {"rank": "signed", "replace": "random"})])
def test_three_steps_on_tiny_models(name: str, kwargs: dict) -> None:
    recipe = sgt(make_model(name, eval_mode=False), **kwargs)
    logs = recipe.fit([_batch(size=64)], steps=3, seed=0, progress=False)
    assert len(logs) == 3 and {"classifier/ce", "classifier/kl", "classifier/total"} <= set(logs[0])
    assert all(torch.isfinite(torch.tensor(v)) for row in logs for v in row.values())
    assert logs[0]["classifier/kl"] > 0


def test_mask_takes_floor_of_ratio_lowest_pixels() -> None:
    sal = torch.tensor([[[[5.0, 1.0, 7.0], [0.5, 9.0, 3.0], [2.0, 8.0, 6.0]]],
                        [[[-4.0, 0.0, 1.0], [2.0, 3.0, -1.0], [9.0, 8.0, 7.0]]]])
    mask = sgt_mask(sal, 0.25)  # ⌊0.25·9⌋ = 2 pixels per image
    assert mask.dtype == torch.bool and mask.shape == sal.shape
    assert mask.flatten(1).sum(1).tolist() == [2, 2]
    assert mask[0, 0].nonzero().tolist() == [[0, 1], [1, 0]]  # values 1.0 and 0.5
    assert mask[1, 0].nonzero().tolist() == [[0, 0], [1, 2]]  # values -4 and -1: signed order
    assert sgt_mask(torch.rand(3, 1, 10, 10), 0.29).flatten(1).sum(1).tolist() == [29] * 3  # no float slip
    assert not sgt_mask(sal, 0.0).any() and sgt_mask(sal, 1.0).all()


def test_replace_with_channel_mean_or_channel_range() -> None:
    x, _ = _batch(2, size=8)
    mask = sgt_mask(torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)), 0.1)
    out = sgt_replace(x, mask, "mean")
    means = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    m = mask.expand_as(x)
    assert mask.flatten(1).sum(1).tolist() == [6, 6]  # ⌊0.1·64⌋
    assert torch.equal(out[m], means[m]) and torch.equal(out[~m], x[~m])
    rnd = sgt_replace(x, mask, "random")
    lo, hi = x.amin(dim=(2, 3), keepdim=True).expand_as(x), x.amax(dim=(2, 3), keepdim=True).expand_as(x)
    assert torch.equal(rnd[~m], x[~m]) and bool(((rnd >= lo) & (rnd <= hi)).all())
    assert not torch.equal(rnd[m], means[m])


def test_loss_and_masked_input_match_a_hand_computation() -> None:
    model = make_model("test_resnet")
    recipe = sgt(model, ratio=0.1).eval()
    x, y = _batch(3, size=16)
    leaf = x.clone().requires_grad_(True)
    logits = model(leaf)
    g = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), leaf)[0]
    sal = g.abs().mean(1, keepdim=True)
    got_logits, got_sal = recipe.saliency(x, y)
    assert torch.allclose(got_sal, sal) and torch.allclose(got_logits, logits)
    x_masked = _hand_masked(x, sal, k=25)  # ⌊0.1·256⌋
    assert torch.equal(sgt_replace(x, sgt_mask(sal, 0.1)), x_masked)
    assert int((x_masked != x).any(1).flatten(1).sum(1).min()) == 25
    with torch.no_grad():
        p, q = F.softmax(model(x), 1), F.softmax(model(x_masked), 1)
        ce = F.cross_entropy(model(x), y)
        kl = (p * (p.log() - q.log())).sum(1).mean()
    terms = recipe.compute_phase("classifier", (x, y), 0)
    assert torch.allclose(terms["ce"], ce) and torch.allclose(terms["kl"], kl, atol=1e-6)
    assert torch.allclose(terms["total"], ce + kl, atol=1e-6)
    signed = sgt(model, rank="signed").eval().saliency(x, y)[1]
    assert torch.allclose(signed, g.mean(1, keepdim=True))


def test_kl_is_zero_when_nothing_is_masked() -> None:
    model = make_model("test_resnet", eval_mode=False)
    x, y = _batch()
    terms = sgt(model, ratio=0.0).compute_phase("classifier", (x, y), 0)
    assert float(terms["kl"]) == 0.0
    assert torch.allclose(terms["ce"], erm(model).compute_phase("classifier", (x, y), 0)["ce"])
    recipe = sgt(model, ratio=0.1)
    assert float(recipe.compute_phase("classifier", (x, y), 0)["kl"].detach()) > 0


def test_saliency_leaves_no_parameter_gradients_and_one_extra_bn_update() -> None:
    model = make_model("test_resnet", eval_mode=False)
    recipe = sgt(model).train()
    x, y = _batch()
    recipe.saliency(x, y)
    assert all(p.grad is None for p in model.parameters())
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = int(bn.num_batches_tracked)
    terms = recipe.compute_phase("classifier", (x, y), 0)
    assert int(bn.num_batches_tracked) == before + 2  # x once (saliency shares its pass), x̃ once
    assert all(p.grad is None for p in model.parameters())
    terms["total"].backward()
    assert all(p.grad is not None for p in model.parameters())
    # the gradients are exactly those of CE + KL with x̃ as a constant (eval mode: deterministic)
    model.zero_grad(set_to_none=True)
    recipe.eval()
    terms = recipe.compute_phase("classifier", (x, y), 0)
    terms["total"].backward()
    got = [p.grad.clone() for p in model.parameters()]
    _, sal = recipe.saliency(x, y)
    x_masked = sgt_replace(x, sgt_mask(sal, 0.1))
    logits = model(x)
    loss = F.cross_entropy(logits, y) + F.kl_div(F.log_softmax(model(x_masked), 1), F.log_softmax(logits, 1),
                                                 reduction="batchmean", log_target=True)
    want = torch.autograd.grad(loss, list(model.parameters()))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ratio": 1.5}, r"egl.recipes.sgt: 'ratio' expected a number in \[0, 1\], got 1.5. Pass the fraction"),
    ({"ratio": -0.1}, "'ratio' expected a number in"),
    ({"ratio": True}, "'ratio' expected a number in"),
    ({"ratio": float("nan")}, "'ratio' expected a number in"),
    ({"rank": "l1"}, r"'rank' expected one of \['abs', 'signed'\], got 'l1'"),
    ({"replace": "zero"}, r"'replace' expected one of \['mean', 'random'\]"),
    ({"kl_weight": -1.0}, "'kl_weight' expected a finite number >= 0"),
])
def test_bad_arguments_say_what_was_expected(kwargs: dict, match: str) -> None:
    with pytest.raises(egl.InputError, match=match):
        SGT(make_model("test_resnet"), **kwargs)


def test_bad_tensors_and_labels_say_what_was_expected() -> None:
    with pytest.raises(egl.InputError, match=r"sgt_mask: 'saliency' expected shape \[B, 1, H, W\]"):
        sgt_mask(torch.rand(2, 3, 4, 4), 0.1)
    with pytest.raises(egl.InputError, match="sgt_replace: 'mask' expected a bool tensor"):
        sgt_replace(torch.rand(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), "mean")
    x, _ = _batch(2, size=16)
    with pytest.raises(egl.InputError, match="'target' expected class indices in"):
        sgt(make_model("test_resnet")).compute_phase("classifier", (x, torch.tensor([0, 7])), 0)
