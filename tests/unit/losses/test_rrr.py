"""Right for the right reasons: input-gradient penalty outside the mask (Ross et al. 2017)."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model

import egl
from egl.losses import RRRLoss, rrr_penalty


def test_value_against_a_manual_double_backprop() -> None:
    model = make_model("test_resnet")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    mask = (torch.rand(2, 1, 32, 32, generator=g) > 0.5).float()
    leaf = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(torch.log_softmax(model(leaf), 1).sum(), leaf)[0]
    expected = ((1 - mask) * grad**2).flatten(1).sum(1)
    torch.testing.assert_close(rrr_penalty(model, x, mask, reduction="none"), expected)
    torch.testing.assert_close(RRRLoss()(model, x, mask), expected.mean())


def test_zero_with_a_full_mask_and_differentiable_wrt_parameters() -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 32, 32)
    assert float(rrr_penalty(model, x, torch.ones(2, 32, 32)).detach()) == 0.0
    rrr_penalty(model, x, torch.zeros(2, 1, 16, 16)).backward()  # masks are resized to x
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(float(gr.abs().sum()) for gr in grads) > 0


def test_vit_double_backward_works() -> None:
    model = make_model("test_vit")
    rrr_penalty(model, torch.randn(2, 3, 32, 32), torch.zeros(2, 32, 32)).backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_errors() -> None:
    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match="'x' expected a 4-D tensor"):
        rrr_penalty(model, torch.randn(3, 32, 32), torch.ones(3, 32, 32))
    with pytest.raises(egl.InputError, match="'mask' expected the same batch size as 'x'"):
        rrr_penalty(model, torch.randn(2, 3, 32, 32), torch.ones(3, 32, 32))


def test_a_model_whose_output_is_not_logits_is_named() -> None:
    """A dense [B, C, H, W] output was taken as logits: log_softmax over its channels, a silent number."""
    with pytest.raises(egl.UnsupportedModelError, match=r"rrr_penalty: the model returned a torch.float32 tensor of "
                                                        r"shape \[2, 4, 8, 8\].*expected logits of shape \[2, "):
        rrr_penalty(torch.nn.Conv2d(3, 4, 1), torch.randn(2, 3, 8, 8), torch.ones(2, 8, 8))


def test_a_model_that_is_not_a_module_and_float64_images_are_named() -> None:
    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match=r"rrr_penalty: 'model' expected a torch.nn.Module classifier"):
        rrr_penalty(lambda t: model(t), torch.randn(2, 3, 32, 32), torch.ones(2, 32, 32))  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"rrr_penalty: 'x' expected images of the model's dtype \(torch.float32"):
        rrr_penalty(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.ones(2, 32, 32))
