"""GraphedExplainer: one captured call per input signature, replayed after.

A real capture needs CUDA (``benchmarks/gpu_checks.py`` compares replays with eager calls on the
device). Here a stand-in ``capture`` runs the call once under a dispatch mode that refuses every
host read (which would break a real capture), and a replay runs it again into the same output
buffers: what the wrapper itself does (signatures, buffers, targets, recaptures) is tested on
the CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _helpers import NUM_CLASSES, make_model
from torch.utils._python_dispatch import TorchDispatchMode

import egl
from egl.explainers import GradCAM, GraphedExplainer, InputGradient
from egl.explainers import graphed as graphed_module

HOST_READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.nonzero.default"}


class _NoHostRead(TorchDispatchMode):
    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        CAST_CACHE_IN_CAPTURE.add(torch.is_autocast_cache_enabled())
        if str(func) in HOST_READS:
            raise AssertionError(f"a host read ({func}) inside the captured call")
        return func(*args, **(kwargs or {}))


CAST_CACHE_IN_CAPTURE: set[bool] = set()  # autocast's cache switch, seen at every op of a capture


def _capture(fn: Any, pool: Any) -> Any:
    with _NoHostRead():
        out = fn()

    def replay() -> None:
        new = fn()
        out.saliency.copy_(new.saliency)
        out.logits.copy_(new.logits)

    return replay, out


@pytest.fixture
def cpu_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graphed_module, "GRAPH_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(graphed_module, "warm_up", lambda fn, n: [fn() for _ in range(n)])
    monkeypatch.setattr(graphed_module, "capture", lambda fn, pool, mode: _capture(fn, pool))
    monkeypatch.setattr(graphed_module, "new_pool", lambda: object())


def _x(seed: int, batch: int = 3, size: int = 48) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_off_cuda_the_call_is_the_explainers_own() -> None:
    model = make_model("test_resnet")
    x = _x(0)
    with GraphedExplainer(GradCAM(model)) as cam:
        got = cam(x, [0, 1, 2])
        assert cam.last_mode == "eager" and cam.captures == 0
    torch.testing.assert_close(got, GradCAM(model)(x, [0, 1, 2]))


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext"])
@pytest.mark.usefixtures("cpu_graphs")
def test_replays_give_the_eager_maps_of_each_new_input(name: str) -> None:
    model = make_model(name)
    size = 48 if name == "test_resnet" else 64  # (test_convnext's map is 1 x 1 at 48 px: constant maps)
    eager = GradCAM(model)
    cam = GraphedExplainer(GradCAM(model), warmup=1)
    modes = []
    for seed, target in enumerate([[0, 1, 2], [2, 2, 1], 1, torch.tensor([1, 0, 0])]):
        x = _x(seed, size=size)
        got = cam.explain(x, target)
        modes.append(cam.last_mode)
        want = eager.explain(x, target)
        torch.testing.assert_close(got.saliency, want.saliency)
        torch.testing.assert_close(got.logits, want.logits)
    assert modes == ["capture", "replay", "replay", "replay"] and cam.captures == 1


@pytest.mark.usefixtures("cpu_graphs")
def test_a_model_that_is_not_timm_replays_its_probed_layer() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, 2, 1),
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4)).eval()
    cam = GraphedExplainer(GradCAM(model), warmup=1)  # layer="auto": probed per input size, outside the capture
    for seed in range(3):
        x = _x(seed, size=16)
        torch.testing.assert_close(cam(x, [0, 1, 3]), GradCAM(model)(x, [0, 1, 3]))
    assert cam.captures == 1 and cam.last_mode == "replay"


@pytest.mark.usefixtures("cpu_graphs")
def test_input_gradients_replay_too() -> None:
    model = make_model("test_resnet")
    cam = GraphedExplainer(InputGradient(model), warmup=1)
    for seed in range(2):
        x = _x(seed)
        torch.testing.assert_close(cam(x, [0, 1, 2]), InputGradient(model)(x, [0, 1, 2]))
    assert cam.captures == 1


@pytest.mark.usefixtures("cpu_graphs")
def test_each_signature_has_its_graph_and_the_oldest_is_dropped() -> None:
    model = make_model("test_resnet")
    cam = GraphedExplainer(GradCAM(model), warmup=1, max_graphs=2)
    cam(_x(0), [0, 1, 2])
    cam(_x(1), None)  # the predicted class: another graph
    assert cam.captures == 2 and cam.last_mode == "capture"
    cam(_x(2), None)
    assert cam.last_mode == "replay"
    cam(_x(3, batch=2), [0, 1])  # another shape: a third graph, the first is dropped
    cam(_x(4), [1, 1, 1])
    assert cam.captures == 4 and cam.last_mode == "capture"
    cam(_x(5).to(memory_format=torch.channels_last), [1, 1, 1])  # another layout
    with torch.autocast("cpu", dtype=torch.bfloat16):  # another autocast state
        cam(_x(5), [1, 1, 1])
    assert cam.captures == 6
    cam.reset()
    cam(_x(5), [1, 1, 1])
    assert cam.captures == 7 and cam.last_mode == "capture"


@pytest.mark.usefixtures("cpu_graphs")
def test_modes_and_the_explainers_settings_are_part_of_the_signature() -> None:
    model = make_model("test_resnet")
    cam = GraphedExplainer(GradCAM(model), warmup=1)
    cam(_x(0), [0, 1, 2])
    model.layer4.train()  # one submodule's mode
    cam(_x(0), [0, 1, 2])
    model.train()
    cam(_x(0), [0, 1, 2])
    model.eval()
    cam(_x(0), [0, 1, 2])
    assert cam.captures == 3 and cam.last_mode == "replay"
    cam.explainer.relu = False  # a setting the captured call read
    got = cam(_x(1), [0, 1, 2])
    assert cam.captures == 4
    torch.testing.assert_close(got, GradCAM(model, relu=False)(_x(1), [0, 1, 2]))


@pytest.mark.usefixtures("cpu_graphs")
def test_autocast_casts_are_captured_without_its_cache() -> None:
    CAST_CACHE_IN_CAPTURE.clear()
    model = make_model("test_resnet")
    cam = GraphedExplainer(GradCAM(model), warmup=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.is_autocast_cache_enabled()
        got = cam(_x(0), [0, 1, 2])
        assert torch.is_autocast_cache_enabled()  # the caller's state is back
        want = GradCAM(model)(_x(0), [0, 1, 2])
    assert CAST_CACHE_IN_CAPTURE == {False}  # the graph casts the parameters at every replay
    torch.testing.assert_close(got, want)


@pytest.mark.usefixtures("cpu_graphs")
def test_an_inner_loss_scale_and_an_input_with_history_are_handled() -> None:
    from egl import _amp

    model = make_model("test_resnet")
    cam = GraphedExplainer(GradCAM(model), warmup=1)
    with _amp.inner_scale(1024.0):  # a training step's scale changes every step: eager
        cam(_x(0), [0, 1, 2])
    assert cam.last_mode == "eager" and cam.captures == 0
    x = _x(0).requires_grad_(True) * 1.0  # a non-leaf with history: the buffer keeps none
    got = cam(x, [0, 1, 2])
    assert cam.last_mode == "capture" and not got.requires_grad
    torch.testing.assert_close(got, GradCAM(model)(x.detach(), [0, 1, 2]))


def test_it_is_an_explainer_of_the_same_model() -> None:
    from egl.explainers import Explainer

    model = make_model("test_resnet")
    cam = GraphedExplainer(GradCAM(model, normalize=False))
    assert isinstance(cam, Explainer) and cam.model is model and cam.normalize is False
    assert not cam.differentiable


@pytest.mark.usefixtures("cpu_graphs")
def test_a_model_given_new_tensors_is_captured_again() -> None:
    model = make_model("test_resnet")
    cam = GraphedExplainer(GradCAM(model), warmup=1)
    x = _x(0)
    cam(x, [0, 1, 2])
    other = make_model("test_resnet", seed=1)
    model.load_state_dict({k: v.clone() for k, v in other.state_dict().items()}, assign=True)
    got = cam(x, [0, 1, 2])
    assert cam.captures == 2 and cam.last_mode == "capture"
    torch.testing.assert_close(got, GradCAM(other)(x, [0, 1, 2]))


@pytest.mark.usefixtures("cpu_graphs")
def test_targets_out_of_range_raise_as_the_explainer_does() -> None:
    model = make_model("test_resnet")
    cam = GraphedExplainer(GradCAM(model), warmup=1)
    bad = f"class indices in \\[0, {NUM_CLASSES - 1}\\]"
    with pytest.raises(egl.InputError, match=bad):  # at the capture (the warm-up checks them)
        cam(_x(0), [0, 1, NUM_CLASSES])
    cam(_x(0), [0, 1, 2])
    with pytest.raises(egl.InputError, match=bad):  # host targets at a replay: no device read
        cam(_x(1), [0, NUM_CLASSES + 3, 2])
    with pytest.raises(egl.InputError, match=bad):  # a tensor on the device: read after the replay
        cam(_x(1), torch.tensor([0, -1, 2]))
    torch.testing.assert_close(cam(_x(2), [2, 0, 1]), GradCAM(model)(_x(2), [2, 0, 1]))


@pytest.mark.usefixtures("cpu_graphs")
def test_clone_false_returns_the_graphs_buffers() -> None:
    model = make_model("test_resnet")
    cam = GraphedExplainer(GradCAM(model), warmup=1, clone=False)
    first = cam(_x(0), [0, 1, 2])
    kept = first.clone()
    second = cam(_x(1), [0, 1, 2])
    assert second is first and not torch.equal(kept, second)
    copies = GraphedExplainer(GradCAM(model), warmup=1)
    assert copies(_x(0), [0, 1, 2]) is not copies(_x(0), [0, 1, 2])


def test_arguments_are_checked() -> None:
    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match=r"'explainer' expected an egl explainer .* GraphedExplainer\(GradCAM"):
        GraphedExplainer(model)  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match="'warmup' expected an int >= 1, got 0"):
        GraphedExplainer(GradCAM(model), warmup=0)
    with pytest.raises(egl.InputError, match="'capture_error_mode' expected one of"):
        GraphedExplainer(GradCAM(model), capture_error_mode="strict")
    with pytest.raises(egl.InputError, match="'clone' expected"):
        GraphedExplainer(GradCAM(model), clone="yes")  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"'create_graph' expected False .* Call the wrapped explainer itself"):
        GraphedExplainer(GradCAM(model))(_x(0), [0, 1, 2], create_graph=True)


@pytest.mark.usefixtures("cpu_graphs")
def test_bad_input_is_named_by_the_explainers_checks() -> None:
    cam = GraphedExplainer(GradCAM(make_model("test_resnet")), warmup=1)
    with pytest.raises(egl.InputError, match="'x' expected"):
        cam(torch.randn(3, 48, 48), [0, 1, 2])
    with pytest.raises(egl.InputError, match="'target' expected one class index per sample"):
        cam(_x(0), [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a real capture needs CUDA")
def test_a_real_capture_matches_the_eager_call_on_cuda() -> None:
    model = make_model("test_resnet").cuda()
    cam, eager = GraphedExplainer(GradCAM(model)), GradCAM(model)
    for seed in range(3):
        x = _x(seed).cuda()
        torch.testing.assert_close(cam(x, [0, 1, 2]), eager(x, [0, 1, 2]))
    assert cam.captures == 1 and cam.last_mode == "replay"
