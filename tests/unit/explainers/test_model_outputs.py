"""Every explainer names a model output that is not ``[B, num_classes]`` logits (a tuple, a dense
map, a vector, another batch size) instead of a silent map or a crash inside torch."""

from __future__ import annotations

import pytest
import torch
from _helpers import NUM_CLASSES
from torch import Tensor, nn

from egl.errors import UnsupportedModelError
from egl.explainers import CaptumExplainer, class_maps, grad_cam, input_gradient


class _Net(nn.Module):
    """A small CNN whose forward returns ``kind`` of output."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: Tensor) -> object:
        a = torch.relu(self.conv(x))
        logits = self.fc(a.mean(dim=(2, 3)))
        if self.kind == "tuple":
            return logits, a
        if self.kind == "dict":
            return {"logits": logits}
        if self.kind == "dense":
            return torch.einsum("kc,bchw->bkhw", self.fc.weight, a)  # segmentation-like [B, K, H, W]
        if self.kind == "vector":
            return logits.sum(1)
        if self.kind == "batch":
            return logits[:1]
        return logits


EXPLAIN = {
    "grad_cam": lambda m, x: grad_cam(m, x),
    "grad_cam_target": lambda m, x: grad_cam(m, x, [0, 1]),
    "input_gradient": lambda m, x: input_gradient(m, x),
    "input_gradient_target": lambda m, x: input_gradient(m, x, [0, 1]),
    "class_maps": lambda m, x: class_maps(m, x).saliency,
    "captum": lambda m, x: CaptumExplainer(m, "Saliency")(x),
}


@pytest.mark.parametrize("kind", ["tuple", "dict", "dense", "vector", "batch"])
@pytest.mark.parametrize("how", list(EXPLAIN))
def test_an_output_that_is_not_logits_is_named(kind: str, how: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedModelError, match=r"expected logits of shape \[2, num_classes\]") as e:
        EXPLAIN[how](_Net(kind).eval(), x)
    assert "Wrap the model" in str(e.value)


@pytest.mark.parametrize("how", list(EXPLAIN))
def test_logits_pass(how: str) -> None:
    x = torch.randn(2, 3, 8, 8)
    assert EXPLAIN[how](_Net("logits").eval(), x).shape[0] == 2
