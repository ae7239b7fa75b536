"""egl.kernels.subpixel_dgrad: the stem's input gradient as a stride-1 convolution + pixel shuffle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import NUM_CLASSES, make_model
from torch import nn

import egl
from egl import recipes
from egl.explainers import InputGradient
from egl.kernels import subpixel_dgrad as sd
from egl.losses.rrr import rrr_penalty

# (kernel, stride, padding, input H, W): ResNet, ResNet-D, ConvNeXt, ViT stems, odd sizes, rectangular
# kernels and strides, padding wider than half the kernel, inputs the strides do not divide
SHAPES = [((7, 7), (2, 2), (3, 3), 32, 32), ((7, 7), (2, 2), (3, 3), 33, 31), ((3, 3), (2, 2), (1, 1), 17, 16),
          ((4, 4), (4, 4), (0, 0), 30, 33), ((16, 16), (16, 16), (0, 0), 64, 48), ((3, 5), (2, 3), (1, 2), 20, 23),
          ((5, 5), (3, 3), (0, 0), 20, 20), ((2, 2), (2, 2), (0, 0), 9, 9), ((3, 3), (2, 2), (4, 4), 10, 10),
          ((1, 1), (2, 2), (0, 0), 7, 8)]


@pytest.fixture(autouse=True)
def _config() -> None:
    saved = dict(sd.CONFIG)
    yield
    sd.CONFIG.clear()
    sd.CONFIG.update(saved)


@pytest.mark.parametrize("kernel,stride,padding,h,w", SHAPES)
def test_input_grad_equals_the_convolution_backward(kernel, stride, padding, h, w) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    weight = torch.randn(5, 3, *kernel, dtype=torch.float64)
    g = torch.randn_like(F.conv2d(x, weight, stride=stride, padding=padding))
    want = torch.nn.grad.conv2d_input(x.shape, weight, g, stride=stride, padding=padding)
    got = sd.conv2d_input_grad(g, weight, (h, w), stride, padding)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_gradients_of_every_order() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return sd._conv(x, w, b, (2, 2), (3, 3))
    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))  # the weight gradient's dependence on x too


def test_a_penalty_on_the_weight_gradient_differentiates_in_the_input() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    res = []
    for conv in (lambda x: F.conv2d(x, w, None, 2, 3), lambda x: sd._conv(x, w, None, (2, 2), (3, 3))):
        (gw,) = torch.autograd.grad(torch.tanh(conv(x)).sum(), w, create_graph=True)
        res.append(torch.autograd.grad(gw.square().sum(), x)[0])
    torch.testing.assert_close(res[1], res[0], rtol=1e-10, atol=1e-10)


def test_input_gradient_differentiates_like_the_native_one() -> None:
    # RRR's use: the input gradient with create_graph, a penalty on it, its gradient everywhere
    torch.manual_seed(0)
    x = torch.randn(2, 3, 13, 12, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(4, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(5, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    res = []
    for conv in (lambda x: F.conv2d(x, w1, b1, 2, 3), lambda x: sd._conv(x, w1, b1, (2, 2), (3, 3))):
        out = F.conv2d(torch.tanh(conv(x)), w2).square().sum()
        (gx,) = torch.autograd.grad(out, x, create_graph=True)
        res.append(torch.autograd.grad(gx.square().sum(), [x, w1, b1, w2]))
    for a, b in zip(*res):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


class Stem(nn.Module):
    """A ResNet-like stem (7x7 / 2, 3 -> 8) with a head: the shape the sub-pixel form speeds up."""

    def __init__(self, k: int = 7, s: int = 2, p: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, k, s, p)
        self.conv2 = nn.Conv2d(8, 8, 3, 2, 1)  # more input channels: never swapped
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(F.relu(self.conv1(x))).mean((2, 3)))


def _grads(model: nn.Module, x: torch.Tensor, use: str) -> tuple[torch.Tensor, ...]:
    sd.CONFIG["use"] = use
    leaf = x.detach().requires_grad_(True)
    with sd.subpixel_input_grads(model):
        out = model(leaf).square().sum()
    return torch.autograd.grad(out, [leaf, *model.parameters()])


def test_context_swaps_the_stem_only_and_changes_no_gradient() -> None:
    torch.manual_seed(0)
    model, x = Stem(), torch.randn(2, 3, 33, 30)
    with sd.subpixel_input_grads(model) as names:
        assert names == ["conv1"] and type(model.conv1) is not nn.Conv2d and type(model.conv2) is nn.Conv2d
    assert type(model.conv1) is nn.Conv2d  # restored
    native, sub = _grads(model, x, "never"), _grads(model, x, "auto")
    for a, b in zip(native, sub):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_context_uses_the_subpixel_backward_where_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    orig = sd.conv2d_input_grad
    monkeypatch.setattr(sd, "conv2d_input_grad", lambda *a: calls.append(a[3]) or orig(*a))
    x = torch.randn(2, 3, 16, 16)
    _grads(Stem(), x, "never")
    assert calls == []
    _grads(Stem(), x, "auto")  # 7x7/2 on the CPU: worth it
    assert calls == [(2, 2)]
    calls.clear()
    _grads(Stem(3, 2, 1), x, "auto")  # 3x3/2: measured slower, the library's own
    assert calls == []
    _grads(Stem(3, 2, 1), x, "always")
    assert calls == [(2, 2)]
    calls.clear()
    model = Stem()
    with sd.subpixel_input_grads(model):
        model(x).sum().backward()  # the input needs no gradient: the plain convolution
    assert calls == []


def test_context_restores_the_modules_after_an_error() -> None:
    model = Stem()
    with pytest.raises(RuntimeError, match="boom"):
        with sd.subpixel_input_grads(model):
            raise RuntimeError("boom")
    assert type(model.conv1) is nn.Conv2d


def test_bad_config_names_the_setting() -> None:
    sd.CONFIG["use"] = "sometimes"
    with pytest.raises(egl.InputError, match=r"'CONFIG\['use'\]' expected one of \['auto', 'always', 'never'\]"):
        with sd.subpixel_input_grads(Stem()):
            pass


def test_eligibility_and_worth() -> None:
    assert sd.eligible(nn.Conv2d(3, 8, 7, 2, 3)) and sd.eligible(nn.Conv2d(3, 8, 16, 16))
    assert not sd.eligible(nn.Conv2d(3, 8, 3, 1, 1))  # stride 1
    assert not sd.eligible(nn.Conv2d(16, 8, 7, 2, 3))  # many input channels
    assert not sd.eligible(nn.Conv2d(3, 3, 7, 2, 3, groups=3))
    assert not sd.eligible(nn.Conv2d(3, 8, 7, 2, 3, dilation=2))
    assert not sd.eligible(nn.Conv2d(3, 8, 7, 2, 3, padding_mode="reflect"))
    assert sd.worth((7, 7), (2, 2)) and sd.worth((16, 16), (16, 16)) and sd.worth((4, 4), (4, 4))
    assert not sd.worth((3, 3), (2, 2)) and not sd.worth((4, 4), (2, 2)) and not sd.worth((2, 2), (2, 2))


def test_auto_takes_the_cpu_and_16_bit_cuda() -> None:
    """``use="auto"``: CPU tensors, and on CUDA 16-bit computations only (float32 there was no
    faster and takes cuDNN's TF32 kernels: 3e-4 error on an H200); other devices never."""
    from types import SimpleNamespace

    conv = nn.Conv2d(3, 8, 7, 2, 3)
    on = lambda dev, dtype: SimpleNamespace(device=torch.device(dev), dtype=dtype)  # noqa: E731
    assert sd._auto_applies(conv, on("cpu", torch.float32))
    assert sd._auto_applies(conv, on("cuda", torch.bfloat16)) and sd._auto_applies(conv, on("cuda", torch.float16))
    assert not sd._auto_applies(conv, on("cuda", torch.float32))
    assert not sd._auto_applies(conv, on("meta", torch.bfloat16))
    assert not sd._auto_applies(nn.Conv2d(3, 8, 3, 2, 1), on("cpu", torch.float32))  # not worth it


def test_autocast_keeps_the_inputs_dtype_and_matches_the_native_backward() -> None:
    torch.manual_seed(0)
    model, x = Stem(), torch.randn(2, 3, 32, 32)
    res = {}
    for use in ("never", "auto"):
        sd.CONFIG["use"] = use
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16), sd.subpixel_input_grads(model):
            out = model(leaf).float().square().sum()
        res[use] = torch.autograd.grad(out, [leaf, model.conv1.weight])
    assert res["auto"][0].dtype == torch.float32 and res["auto"][1].dtype == torch.float32
    for a, b in zip(res["never"], res["auto"]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * float(b.abs().max()))


@pytest.mark.parametrize("name", ["test_vit", "test_convnext"])
def test_input_gradient_explainer_unchanged(name: str) -> None:
    model = make_model(name)
    x = torch.randn(2, 3, *model.default_cfg["input_size"][1:]) if name == "test_vit" else torch.randn(2, 3, 32, 32)
    sd.CONFIG["use"] = "never"
    want = InputGradient(model)(x, [0, 1])
    sd.CONFIG["use"] = "auto"
    torch.testing.assert_close(InputGradient(model)(x, [0, 1]), want, rtol=1e-4, atol=1e-5)


def test_rrr_double_backward_unchanged() -> None:
    torch.manual_seed(0)
    model, x = Stem(), torch.randn(2, 3, 16, 16)
    mask = (torch.rand(2, 1, 16, 16) > 0.5).float()
    grads = {}
    for use in ("never", "auto"):
        sd.CONFIG["use"] = use
        model.zero_grad()
        rrr_penalty(model, x, mask).backward()  # second order: through the input gradient into the weights
        grads[use] = [p.grad.clone() for p in model.parameters()]
    for a, b in zip(grads["never"], grads["auto"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_align_masker_phase_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    orig = sd.conv2d_input_grad
    monkeypatch.setattr(sd, "conv2d_input_grad", lambda *a: calls.append(1) or orig(*a))
    model = make_model("test_convnext", eval_mode=False)  # a 4x4/4 stem: swapped on the CPU
    recipe = recipes.align(model, warmup_steps=0)
    torch.manual_seed(0)
    batch = recipes.as_batch({"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 1, 0])})
    grads = {}
    for use in ("never", "auto"):
        sd.CONFIG["use"] = use
        recipe.masker.zero_grad()
        recipe.compute_phase("masker", batch, 0)["total"].backward()
        grads[use] = [p.grad.clone() for p in recipe.masker.parameters() if p.grad is not None]
    assert grads["auto"] and calls == [1]  # the masked pair's input gradient, once
    for a, b in zip(grads["never"], grads["auto"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _all_grads(model: nn.Module, x: torch.Tensor, use: str) -> list[torch.Tensor]:
    sd.CONFIG["use"] = use
    leaf = x.detach().clone().requires_grad_(True)
    with sd.subpixel_input_grads(model):
        out = model(leaf).square().sum()
    out.backward()  # after the block, as a training step's backward runs
    grads = [leaf.grad, *[p.grad.clone() for p in model.parameters()]]
    model.zero_grad()
    return grads


def test_in_place_op_after_the_stem() -> None:
    # AlexNet: 11x11/4 stem, then ReLU(inplace=True) on its output
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 11, 4, 2), nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(2, 3, 40, 40)
    model(x)
    for a, b in zip(_all_grads(model, x, "never"), _all_grads(model, x, "auto")):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_around_the_stem() -> None:
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(Stem):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = checkpoint(lambda z: F.relu(self.conv1(z)), x, use_reentrant=False)
            return self.fc(self.conv2(h).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Checkpointed(), torch.randn(2, 3, 20, 20)
    for a, b in zip(_all_grads(model, x, "never"), _all_grads(model, x, "always")):  # the recompute matches
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_float64_under_autocast_stays_float64() -> None:
    model, x = Stem().double(), torch.randn(2, 3, 16, 16, dtype=torch.float64)
    outs = {}
    for use in ("never", "always"):
        sd.CONFIG["use"] = use
        leaf = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16), sd.subpixel_input_grads(model):
            y = model.conv1(leaf)
        outs[use] = (y, torch.autograd.grad(y.sum(), leaf)[0])
    assert outs["always"][0].dtype == outs["never"][0].dtype == torch.float64
    torch.testing.assert_close(outs["always"][1], outs["never"][1])


def test_channels_last_input_gets_a_channels_last_gradient() -> None:
    model = Stem().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with sd.subpixel_input_grads(model):
        model(x).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_bad_channel_limit_names_the_setting() -> None:
    sd.CONFIG["max_in_channels"] = 0
    with pytest.raises(egl.InputError, match=r"'CONFIG\['max_in_channels'\]' expected an int >= 1, got 0"):
        with sd.subpixel_input_grads(Stem()):
            pass


def test_channels_last_weight_gets_a_channels_last_gradient() -> None:
    conv = nn.Conv2d(3, 8, 7, 2, 3).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).requires_grad_(True)
    with sd.subpixel_input_grads(conv):
        got = torch.autograd.grad(conv(x).sum(), x)[0]
    want = torch.autograd.grad(conv(x).sum(), x)[0]
    assert got.stride() == want.stride() and want.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, want)
