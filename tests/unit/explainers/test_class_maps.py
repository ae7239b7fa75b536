"""class_maps: signed Grad-CAM of every class, closed form and per-class fallback."""

from __future__ import annotations

import pytest
import torch
from _helpers import NUM_CLASSES, make_model

from egl.explainers import class_maps, grad_cam


@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
def test_relu_of_each_class_map_is_that_class_grad_cam(name: str) -> None:
    model = make_model(name)
    x = torch.randn(2, 3, 64, 64)
    out = class_maps(model, x)
    assert out.saliency.shape[:2] == (2, NUM_CLASSES) and out.logits.shape == (2, NUM_CLASSES)
    for k in range(NUM_CLASSES):
        ref = grad_cam(model, x, k, upsample=False, normalize=False)
        torch.testing.assert_close(torch.relu(out.saliency[:, k : k + 1]), ref, atol=1e-7, rtol=1e-5)
    assert bool((out.saliency < 0).any())  # signed: negative evidence is kept


def test_differentiable_when_asked() -> None:
    model = make_model("test_resnet")
    out = class_maps(model, torch.randn(2, 3, 64, 64), create_graph=True)
    out.saliency.abs().sum().backward()
    assert model.get_classifier().weight.grad is not None
    assert not class_maps(model, torch.randn(2, 3, 64, 64)).saliency.requires_grad
