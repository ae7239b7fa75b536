import torch
from _helpers import make_model

import egl
from egl.explainers import grad_cam


def test_import_and_grad_cam_shape() -> None:
    model = make_model("test_resnet")
    sal = grad_cam(model, torch.randn(2, 3, 64, 64), [0, 1])
    assert sal.shape == (2, 1, 64, 64)
    assert "grad_cam" in egl.list_components("explainer")
