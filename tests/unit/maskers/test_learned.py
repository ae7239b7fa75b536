"""egl.maskers.LearnedMasker: ALIGN's two conv blocks + 1x1 conv + sigmoid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import egl
from egl.maskers import LearnedMasker


def test_architecture_default_width() -> None:
    m = LearnedMasker()
    kinds = [type(layer) for layer in m.net]
    assert kinds == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.Conv2d]
    c1, _, bn1, c2, _, bn2, c3 = m.net
    assert (c1.in_channels, c1.out_channels, c1.kernel_size, c1.padding) == (3, 32, (3, 3), (1, 1))
    assert (c2.in_channels, c2.out_channels, c2.kernel_size, c2.padding) == (32, 32, (3, 3), (1, 1))
    assert (c3.in_channels, c3.out_channels, c3.kernel_size) == (32, 1, (1, 1))
    assert bn1.num_features == bn2.num_features == 32


@pytest.mark.parametrize(("in_channels", "width"), [(1, 4), (3, 8), (5, 16)])
def test_width_and_channels_configurable(in_channels: int, width: int) -> None:
    m = LearnedMasker(in_channels=in_channels, width=width)
    convs = [layer for layer in m.net if isinstance(layer, nn.Conv2d)]
    assert [c.in_channels for c in convs] == [in_channels, width, width]
    assert [c.out_channels for c in convs] == [width, width, 1]
    out = m(torch.randn(2, in_channels, 12, 10))
    assert out.shape == (2, 1, 12, 10)


def test_output_is_sigmoid_of_net_in_open_unit_interval() -> None:
    torch.manual_seed(0)
    m = LearnedMasker(width=8)
    x = torch.randn(3, 3, 16, 16)
    out = m(x)
    assert out.shape == (3, 1, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.sigmoid(m.net(x)))
    assert 0.0 < float(out.detach().min()) and float(out.detach().max()) < 1.0


def test_ignores_mask_argument() -> None:
    torch.manual_seed(0)
    m = LearnedMasker(width=4).eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(m(x, torch.ones(2, 8, 8)), m(x))


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    m = LearnedMasker(width=8)
    m(torch.randn(2, 3, 8, 8)).mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        assert float(p.grad.abs().sum()) > 0, name


def test_registered_and_trainable() -> None:
    m = egl.create("masker", "learned", width=4)
    assert isinstance(m, LearnedMasker)
    assert LearnedMasker.trainable and not LearnedMasker.needs_mask


def test_errors() -> None:
    m = LearnedMasker()
    msg = r"learned: 'x' expected 3 channels, got 1 \(shape \[2, 1, 8, 8\]\)\. Build the masker with in_channels=1"
    with pytest.raises(egl.InputError, match=msg):
        m(torch.randn(2, 1, 8, 8))
    with pytest.raises(egl.InputError, match=r"learned: 'x' expected a 4-D tensor of shape \[B, C, H, W\]"):
        m(torch.randn(3, 8, 8))
    for arg, bad in (("in_channels", 0), ("width", -2), ("width", 2.5), ("in_channels", True)):
        with pytest.raises(egl.InputError, match=rf"LearnedMasker: '{arg}' expected an int >= 1, got {bad!r}"):
            LearnedMasker(**{arg: bad})  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["channels_last", "auto"])
def test_memory_format_changes_layout_not_values(fmt: str) -> None:
    torch.manual_seed(0)
    ref = LearnedMasker(width=8, memory_format="input")
    m = LearnedMasker(width=8, memory_format=fmt)
    m.load_state_dict(ref.state_dict())
    x = torch.randn(3, 3, 17, 13)
    out_ref, out = ref(x), m(x)
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
    out_ref.square().mean().backward()
    out.square().mean().backward()
    for (name, p_ref), p in zip(ref.named_parameters(), m.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)
    for b_ref, b in zip(ref.buffers(), m.buffers()):  # BatchNorm statistics updated alike
        torch.testing.assert_close(b, b_ref, rtol=1e-5, atol=1e-6)
    assert out.shape == (3, 1, 17, 13) and out.is_contiguous()


def test_memory_format_auto_is_channels_last_on_cpu() -> None:
    m = LearnedMasker(width=4)
    seen = []
    m.net[0].register_forward_hook(lambda mod, inp, out: seen.append(out))
    m(torch.randn(2, 3, 8, 8))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert "memory_format='auto'" in repr(m)


def test_memory_format_error() -> None:
    with pytest.raises(egl.InputError, match=r"LearnedMasker: 'memory_format' expected one of \['auto', "
                                             r"'channels_last', 'input'\], got 'nhwc'"):
        LearnedMasker(memory_format="nhwc")


def test_float64_images_are_named() -> None:
    with pytest.raises(egl.InputError, match=r"egl.maskers.learned: 'x' expected images of the model's dtype "
                                             r"\(torch.float32\), got a torch.float64"):
        LearnedMasker()(torch.rand(2, 3, 16, 16, dtype=torch.float64))
