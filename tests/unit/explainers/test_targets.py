"""Explainer targets: ranges known on the host need no device read; on an accelerator the read
of a device tensor's range waits until the call is queued (exercised here with DEFER_ON_CPU)."""

from __future__ import annotations

import sys

import pytest
import torch
from _helpers import NUM_CLASSES, count_egl_reads, make_model
from torch import Tensor, nn

from egl.errors import InputError
from egl.explainers import GradCAM, InputGradient
from egl.explainers import _targets
from egl.explainers._targets import targets

FN = "egl.explainers.grad_cam"
grad_cam_module = sys.modules[GradCAM.__module__]  # the name egl.explainers.grad_cam is the function


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return make_model("test_resnet")


@pytest.fixture
def images() -> Tensor:
    torch.manual_seed(0)
    return torch.randn(4, 3, 32, 32)


@pytest.fixture
def deferred(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the accelerator's path on the CPU: read a target tensor's range at the end of the call."""
    monkeypatch.setattr(_targets, "DEFER_ON_CPU", True)


def test_host_specs_carry_their_range_without_a_device_read(monkeypatch: pytest.MonkeyPatch) -> None:
    meta = torch.device("meta")  # a device whose values cannot be read: any read would fail
    assert targets(3, 4, FN, meta).known == (3, 3)
    assert targets([0, 4, 2, 1], 4, FN, meta).known == (0, 4)
    t = targets(torch.tensor([2, 0, 1, 1]), 4, FN, meta)
    assert t.known == (0, 2) and t.tensor.device == meta and t.tensor.dtype == torch.long
    assert targets(None, 4, FN, meta) is None
    assert t.index(NUM_CLASSES, FN, defer=True) is t.tensor  # checked against the host range
    with pytest.raises(InputError, match=r"'target' expected class indices in \[0, 1\] \(the model has 2 "
                                         r"outputs\), got values in \[0, 2\]"):
        t.index(2, FN, defer=True)


@pytest.mark.parametrize("target", [1, [0, 1, 2, 1]])
def test_python_targets_are_never_read_back(resnet: nn.Module, images: Tensor, target: object,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    counts = count_egl_reads(monkeypatch)
    GradCAM(resnet)(images, target)
    assert counts.get("explainers/_targets.py", 0) == 0, counts


@pytest.mark.parametrize("path,layer", [("closed_form", "auto"), ("pooled", "auto"), ("autograd", "auto"),
                                        ("autograd", "layer4")])
def test_deferred_read_comes_after_the_maps_and_changes_nothing(resnet: nn.Module, images: Tensor, path: str,
                                                                layer: str, deferred: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    y = torch.tensor([0, 3, 1, 4])
    with GradCAM(resnet, layer, path=path) as cam:
        _targets.DEFER_ON_CPU = False
        want = cam.explain(images, y)
        _targets.DEFER_ON_CPU = True
        events: list[str] = []
        epilogue, tolist = grad_cam_module.cam_epilogue, torch.Tensor.tolist
        monkeypatch.setattr(grad_cam_module, "cam_epilogue",
                            lambda *a, **k: events.append("maps") or epilogue(*a, **k))
        monkeypatch.setattr(torch.Tensor, "tolist", lambda self: events.append("read") or tolist(self))
        got = cam.explain(images, y)
    assert events == ["maps", "read"]
    assert torch.equal(got.saliency, want.saliency) and torch.equal(got.logits, want.logits)


@pytest.mark.parametrize("bad", [[0, 3, NUM_CLASSES, 1], [0, -1, 2, 1], [NUM_CLASSES + 7] * 4])
@pytest.mark.parametrize("path,layer", [("closed_form", "auto"), ("pooled", "auto"), ("autograd", "layer4")])
def test_deferred_out_of_range_target_raises_the_immediate_error(resnet: nn.Module, images: Tensor,
                                                                 bad: list[int], path: str, layer: str,
                                                                 deferred: None) -> None:
    # without the clamp the gather would fail first (on CUDA: a device assert that ends the process)
    lo, hi = min(bad), max(bad)
    match = (rf"egl.explainers.grad_cam: 'target' expected class indices in \[0, {NUM_CLASSES - 1}\] "
             rf"\(the model has {NUM_CLASSES} outputs\), got values in \[{lo}, {hi}\]")
    with pytest.raises(InputError, match=match):
        GradCAM(resnet, layer, path=path)(images, torch.tensor(bad))
    with pytest.raises(InputError, match=match):  # also while differentiating (a training loss)
        GradCAM(resnet, layer, path=path).explain(images, torch.tensor(bad), create_graph=True)


def test_input_gradient_defers_its_read_too(resnet: nn.Module, images: Tensor, deferred: None) -> None:
    y = torch.tensor([0, 3, 1, 4])
    got = InputGradient(resnet)(images, y)
    _targets.DEFER_ON_CPU = False
    assert torch.equal(got, InputGradient(resnet)(images, y))
    _targets.DEFER_ON_CPU = True
    with pytest.raises(InputError, match=r"egl.explainers.input_gradient: 'target' expected class indices"):
        InputGradient(resnet)(images, torch.tensor([0, 1, NUM_CLASSES, 2]))


def test_deferred_read_while_differentiating_input_gradients(resnet: nn.Module, images: Tensor,
                                                            deferred: None) -> None:
    y = torch.tensor([0, 3, 1, 4])
    got = InputGradient(resnet).explain(images, y, create_graph=True)
    _targets.DEFER_ON_CPU = False
    want = InputGradient(resnet).explain(images, y, create_graph=True)
    _targets.DEFER_ON_CPU = True
    torch.testing.assert_close(got.saliency, want.saliency)
    with pytest.raises(InputError, match=r"got values in \[0, 5\]"):
        InputGradient(resnet).explain(images, torch.tensor([0, 5, 1, 4]), create_graph=True)


def test_a_range_known_inside_a_training_step_is_not_read(deferred: None) -> None:
    from egl._deferred import deferred_checks

    y = torch.tensor([0, 3, 1, 4])
    with deferred_checks() as checks:
        checks.note_range(y, 0, 4)  # as a recipe's batch notes labels read on the host
        t = targets(y, 4, FN, y.device)
        assert t.index(NUM_CLASSES, FN, defer=True) is y  # checked now from the noted range: no clamp
        assert t._pending is None


def test_captum_checks_at_once(resnet: nn.Module, images: Tensor, deferred: None) -> None:
    from egl.explainers import CaptumExplainer

    exp = CaptumExplainer(resnet, method="Saliency")
    with pytest.raises(InputError, match=r"egl.explainers.captum: 'target' expected class indices"):
        exp(images, torch.tensor([0, 1, NUM_CLASSES, 2]))


def test_mixup_regularizer_passes_host_targets_on(resnet: nn.Module, images: Tensor,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.regularizers import MixupConsistency

    seen = []
    cam = GradCAM(resnet)
    explain = cam.explain
    monkeypatch.setattr(cam, "explain", lambda x, t, **k: seen.append(t) or explain(x, t, **k))
    MixupConsistency()(cam, images, [0, 1, 1, 0])
    assert seen == [[0, 1, 1, 0]] * 2  # the list itself: its range checked on the host


@pytest.mark.parametrize("bad", [2 ** 70, [0, 2 ** 64, 1, 2]])
def test_indices_beyond_int64_name_the_argument(bad: object) -> None:
    with pytest.raises(InputError, match=r"'target' expected class indices that fit in int64"):
        targets(bad, 4, FN, torch.device("cpu"))
