"""Input-gradient saliency: the contract, equality with a hand-written gradient, double backprop."""

from __future__ import annotations

import pytest
import torch
from _helpers import NUM_CLASSES, make_model
from torch import Tensor, nn

from egl.errors import InputError
from egl.explainers import InputGradient, input_gradient, minmax_normalize

TARGETS = [0, 3, 1, 4]


def manual_gradient(model: nn.Module, x: Tensor, target: list[int]) -> Tensor:
    leaf = x.clone().requires_grad_(True)
    logits = model(leaf)
    return torch.autograd.grad(logits.gather(1, torch.tensor(target)[:, None]).sum(), leaf)[0]


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return make_model("test_resnet")


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_output_contract(name: str, images: Tensor) -> None:
    model = make_model(name)
    out = InputGradient(model).explain(images, TARGETS)
    sal = out.saliency
    assert sal.shape == (4, 1, 64, 64) and sal.dtype == torch.float32 and sal.device == images.device
    assert torch.isfinite(sal).all() and sal.min() >= 0 and sal.max() <= 1
    assert torch.allclose(sal.flatten(1).amax(1), torch.ones(4))
    assert torch.equal(sal.flatten(1).amin(1), torch.zeros(4))
    assert torch.allclose(out.logits, model(images), atol=1e-5)
    assert not sal.requires_grad and not out.logits.requires_grad


def test_equals_manual_gradient(resnet: nn.Module, images: Tensor) -> None:
    g = manual_gradient(resnet, images, TARGETS)
    raw = input_gradient(resnet, images, TARGETS, normalize=False, absolute=True)
    assert torch.allclose(raw, g.abs().mean(1, keepdim=True), rtol=1e-5, atol=1e-9)
    summed = input_gradient(resnet, images, TARGETS, normalize=False, reduce="sum")
    assert torch.allclose(summed, g.abs().sum(1, keepdim=True), rtol=1e-5, atol=1e-9)
    signed = input_gradient(resnet, images, TARGETS, normalize=False, absolute=False, reduce="none")
    assert torch.allclose(signed, g, rtol=1e-5, atol=1e-9)
    assert (signed < 0).any()
    norm = input_gradient(resnet, images, TARGETS)
    assert torch.allclose(norm, minmax_normalize(g.abs().mean(1, keepdim=True)), atol=1e-5)


def test_reduce_none_keeps_channels(resnet: nn.Module, images: Tensor) -> None:
    sal = input_gradient(resnet, images, TARGETS, reduce="none")
    assert sal.shape == (4, 3, 64, 64)
    assert sal.min() >= 0 and sal.max() <= 1
    # normalised per sample over all channels together
    assert torch.allclose(sal.flatten(1).amax(1), torch.ones(4))


def test_target_forms_agree(resnet: nn.Module, images: Tensor) -> None:
    ref = input_gradient(resnet, images, torch.full((4,), 2))
    for t in (2, [2] * 4, torch.tensor(2)):
        assert torch.equal(input_gradient(resnet, images, t), ref)
    pred = resnet(images).argmax(1)
    assert torch.equal(input_gradient(resnet, images), input_gradient(resnet, images, pred))


def test_create_graph_reaches_parameters(images: Tensor) -> None:
    model = make_model("test_resnet")
    sal = input_gradient(model, images, TARGETS, create_graph=True)
    assert sal.requires_grad
    mask = torch.zeros_like(sal)
    mask[..., 16:48, 16:48] = 1
    torch.nn.functional.binary_cross_entropy(sal.clamp(1e-4, 1 - 1e-4), mask).backward()
    for name in ("conv1.0.weight", "fc.weight"):
        g = dict(model.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_create_graph_on_a_vit(images: Tensor) -> None:
    # fused attention kernels have no double backward; the explainer must still work
    model = make_model("test_vit")
    input_gradient(model, images, TARGETS, create_graph=True).sum().backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_without_create_graph_nothing_requires_grad(images: Tensor) -> None:
    model = make_model("test_resnet")
    x = images.clone().requires_grad_(True)
    out = InputGradient(model).explain(x, TARGETS)
    assert not out.saliency.requires_grad and not out.logits.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None and torch.equal(x.detach(), images)


@pytest.mark.parametrize("train", [False, True])
def test_mode_and_eval_statistics_untouched(train: bool, images: Tensor) -> None:
    model = make_model("test_resnet", eval_mode=not train)
    before = {k: v.clone() for k, v in model.named_buffers()}
    input_gradient(model, images, TARGETS, create_graph=True)
    assert model.training == train and all(m.training == train for m in model.modules())
    if not train:
        assert all(torch.equal(v, before[k]) for k, v in model.named_buffers())


def test_batch_of_one_equals_row(resnet: nn.Module, images: Tensor) -> None:
    full = input_gradient(resnet, images, TARGETS)
    for i, t in enumerate(TARGETS):
        assert torch.allclose(input_gradient(resnet, images[i:i + 1], t), full[i:i + 1], atol=1e-5)


def test_bad_arguments(resnet: nn.Module, images: Tensor) -> None:
    with pytest.raises(InputError, match=r"'reduce' expected one of \['mean', 'sum', 'none'\]"):
        InputGradient(resnet, reduce="max")
    with pytest.raises(InputError, match=rf"class indices in \[0, {NUM_CLASSES - 1}\]"):
        input_gradient(resnet, images, NUM_CLASSES)
    with pytest.raises(InputError, match="'x' expected a 4-D tensor"):
        input_gradient(resnet, images[0])
    with pytest.raises(InputError, match=r"one class index per sample \(shape \[4\]\)"):
        input_gradient(resnet, images, [0, 1])


def test_works_under_no_grad_and_refuses_inference_mode(resnet: nn.Module, images: Tensor) -> None:
    ref = input_gradient(resnet, images, TARGETS)
    with torch.no_grad():
        assert torch.equal(input_gradient(resnet, images, TARGETS), ref)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        with pytest.raises(InputError, match=r"outside torch.inference_mode\(\)"):
            input_gradient(resnet, images, TARGETS)
