"""SGDrop recipe: which activations are dropped, loss against a hand computation, hygiene, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import make_model
from torch import nn

import egl
from egl.recipes.erm import erm
from egl.recipes.sgdrop import SGDrop, sgdrop, sgdrop_mask


def _batch(n: int = 4, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 3


def _hand_saliency(model: nn.Module, feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    a = feats.detach().clone().requires_grad_(True)
    s = model.forward_head(a).gather(1, y[:, None]).sum()
    return F.relu(a * torch.autograd.grad(s, a)[0]).detach()


class _HeadBN(nn.Module):
    """forward_features / forward_head split with BatchNorm in the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(a.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.mark.parametrize(("name", "kwargs"), [("test_resnet", {}), ("test_vit", {}),
                                              ("test_vit", {"granularity": "spatial", "rescale": False})])
def test_three_steps_on_tiny_models(name: str, kwargs: dict) -> None:
    recipe = sgdrop(make_model(name, eval_mode=False), **kwargs)
    logs = recipe.fit([_batch(size=64)], steps=3, seed=0, progress=False)
    assert len(logs) == 3 and {"classifier/ce", "classifier/total"} <= set(logs[0])
    assert all(torch.isfinite(torch.tensor(v)) for row in logs for v in row.values())


def test_mask_drops_the_top_fraction_of_positive_saliency() -> None:
    sal = torch.tensor([[0.0, 3.0, 1.0, 2.0, 0.5, 4.0, 0.0, 0.0, 6.0, 5.0],
                        [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]])
    drop = sgdrop_mask(sal, 0.3)  # ⌊0.3·10⌋ = 3
    assert drop[0].nonzero().flatten().tolist() == [5, 8, 9]  # values 4, 6, 5
    assert drop[1].nonzero().flatten().tolist() == [0, 9]  # only two are salient: zeros never dropped
    assert not sgdrop_mask(sal, 0.0).any()
    maps = torch.zeros(1, 2, 2, 2)
    maps[0, :, 1, 0] = torch.tensor([1.0, 5.0])  # position (1, 0) sums to 6
    maps[0, 0, 0, 1] = 4.0  # the largest single element sits elsewhere
    spatial = sgdrop_mask(maps, 0.25, granularity="spatial")  # ⌊0.25·4⌋ = 1 position, every channel
    assert spatial.shape == maps.shape and spatial[0, :, 1, 0].all() and int(spatial.sum()) == 2
    element = sgdrop_mask(maps, 0.25)  # ⌊0.25·8⌋ = 2 elements
    assert element[0, 1, 1, 0] and element[0, 0, 0, 1] and int(element.sum()) == 2
    tokens = torch.zeros(1, 3, 2)
    tokens[0, 2] = 1.0
    assert sgdrop_mask(tokens, 0.4, granularity="spatial", channel_dim=-1)[0, 2].all()


def test_recipe_drops_exactly_the_top_fraction_and_loss_matches_by_hand() -> None:
    model = make_model("test_resnet")
    recipe = sgdrop(model, ratio=0.1).eval()
    x, y = _batch(3, size=64)
    feats = model.forward_features(x).detach()  # [3, 96, 2, 2]: n = 384 elements, k = 38
    sal = _hand_saliency(model, feats, y)
    assert torch.allclose(recipe.saliency(feats, y), sal)
    keep = recipe.keep_mask(feats, y)
    n, k = feats[0].numel(), 38
    assert bool(((sal > 0).flatten(1).sum(1) >= k).all())  # enough salient elements: exactly k dropped
    dropped = keep.flatten(1) == 0
    assert dropped.sum(1).tolist() == [k] * 3
    kth = sal.flatten(1).sort(1, descending=True).values[:, k - 1 : k]
    assert bool((sal.flatten(1)[dropped.nonzero(as_tuple=True)].view(3, k) >= kth).all())
    assert bool((sal.flatten(1)[~dropped].view(3, n - k) <= kth).all())
    assert torch.allclose(keep.flatten(1)[~dropped], torch.full((3 * (n - k),), n / (n - k)))
    with torch.no_grad():
        ce = F.cross_entropy(model.forward_head(feats * keep), y)
    terms = recipe.compute_phase("classifier", (x, y), 0)
    assert set(terms) == {"ce", "total"} and torch.allclose(terms["ce"], ce)
    assert not torch.allclose(terms["ce"], F.cross_entropy(model(x), y))
    plain = sgdrop(model, rescale=False).eval().keep_mask(feats, y)
    assert set(plain.unique().tolist()) == {0.0, 1.0}


def test_vit_drops_fall_on_the_class_token() -> None:
    model = make_model("test_vit")
    recipe = sgdrop(model).eval()
    x, y = _batch(2)
    feats = model.forward_features(x)  # [2, 17, 64]
    dropped = recipe.keep_mask(feats, y) == 0
    assert dropped[:, 0].any() and not dropped[:, 1:].any()


def test_nothing_dropped_at_ratio_zero_nor_in_the_model() -> None:
    model = make_model("test_resnet", eval_mode=False)
    x, y = _batch()
    torch.manual_seed(0)
    ce = sgdrop(model, ratio=0.0).compute_phase("classifier", (x, y), 0)["ce"]
    assert torch.allclose(ce, erm(model).compute_phase("classifier", (x, y), 0)["ce"])
    model.eval()
    before = model(x)
    terms = sgdrop(model).eval().compute_phase("classifier", (x, y), 0)  # eval: BatchNorm statistics stay
    assert not torch.allclose(terms["ce"], F.cross_entropy(before, y))  # the loss drops...
    assert torch.equal(model(x), before)  # ...the model's own forward never does
    assert not model._forward_hooks and not model._forward_pre_hooks and "forward" not in vars(model)


def test_saliency_leaves_no_parameter_gradients_nor_head_bn_updates() -> None:
    model = make_model("test_resnet", eval_mode=False)
    recipe = sgdrop(model).train()
    x, y = _batch()
    recipe.saliency(model.forward_features(x).detach(), y)
    assert all(p.grad is None for p in model.parameters())
    terms = recipe.compute_phase("classifier", (x, y), 0)
    assert all(p.grad is None for p in model.parameters())
    terms["total"].backward()
    assert all(p.grad is not None for p in model.parameters())

    head_bn = _HeadBN().train()
    terms = sgdrop(head_bn).train().compute_phase("classifier", (x[:, :, :8, :8], y), 0)
    assert int(head_bn.bn.num_batches_tracked) == 1  # the loss pass only, not the saliency pass
    terms["total"].backward()  # the restored buffers did not break the loss graph
    assert head_bn.conv.weight.grad is not None


def test_model_without_a_feature_head_split_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(egl.UnsupportedModelError,
                       match="egl.recipes.sgdrop: .*Sequential has no forward_features or forward_head"):
        sgdrop(model)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ratio": 1.0}, r"egl.recipes.sgdrop: 'ratio' expected a number in \[0, 1\), got 1.0. Pass the fraction"),
    ({"ratio": -0.5}, "'ratio' expected a number in"),
    ({"ratio": "0.1"}, "'ratio' expected a number in"),
    ({"granularity": "channel"}, r"'granularity' expected one of \['element', 'spatial'\], got 'channel'"),
    ({"rescale": 1}, "'rescale' expected a bool, got 1"),
])
def test_bad_arguments_say_what_was_expected(kwargs: dict, match: str) -> None:
    with pytest.raises(egl.InputError, match=match):
        SGDrop(make_model("test_resnet"), **kwargs)


def test_bad_saliency_says_what_was_expected() -> None:
    with pytest.raises(egl.InputError, match="sgdrop_mask: 'saliency' expected a tensor with at least 3"):
        sgdrop_mask(torch.rand(2, 5), 0.1, granularity="spatial")
    with pytest.raises(egl.InputError, match="sgdrop_mask: 'saliency' expected a floating-point tensor"):
        sgdrop_mask(torch.ones(2, 5, dtype=torch.long), 0.1)


class _Wide(nn.Module):
    """A feature map of 32 x 48 x 48 = 73728 elements per sample: more than float16's 65504."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(32, 3)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rescale_counts_in_float32_for_16_bit_features(dtype: torch.dtype) -> None:
    """Counted in float16, 73728 - k kept elements overflow to inf and the factor n / kept is 0:
    the whole map was zeroed (only the head's bias trained). bfloat16 is held to the same answer."""
    torch.manual_seed(0)
    model = _Wide().eval()
    x, y = _batch(2, size=48)
    feats32 = model.forward_features(x).detach()
    recipe = sgdrop(model.to(dtype), ratio=0.1).eval()
    keep = recipe.keep_mask(feats32.to(dtype), y)
    dropped = keep == 0
    n = feats32[0].numel()
    kept = (~dropped).flatten(1).sum(1)
    assert bool((kept > 0).all()) and bool(torch.isfinite(keep).all())
    want = (n / kept.double()).to(dtype)  # the exact factor, rounded once
    for i in range(2):
        assert keep[i][~dropped[i]].unique().tolist() == [want[i].item()]
