"""egl.maskers._bias_relu: the learned masker's bias adds and ReLUs in one pass each."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import egl
from egl.maskers import LearnedMasker, _bias_relu
from egl.maskers._bias_relu import bias_relu


def _step(masker: LearnedMasker, x: torch.Tensor, mode: str, monkeypatch: pytest.MonkeyPatch) -> tuple:
    monkeypatch.setitem(_bias_relu.CONFIG, "mode", mode)
    masker = copy.deepcopy(masker)
    out = masker(x)
    out.pow(2).sum().backward()
    return out.detach().float(), [p.grad for p in masker.parameters()], [b.clone() for b in masker.buffers()]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture
def masker() -> LearnedMasker:
    torch.manual_seed(0)
    return LearnedMasker().train()


def test_one_pass_trains_the_masker_as_its_modules_do(masker: LearnedMasker,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """float32: the same mask, running statistics and gradients up to the bias gradients' order of
    summation; the kernel ran (channels-last hidden maps on the CPU, the Triton interpreter)."""
    from egl.kernels import channel_affine

    ran = []
    real = channel_affine.channel_affine
    monkeypatch.setattr(channel_affine, "channel_affine", lambda *a, **k: ran.append(k) or real(*a, **k))
    x = torch.randn(3, 3, 20, 18, generator=torch.Generator().manual_seed(1))
    ref = _step(masker, x, "torch", monkeypatch)
    assert not any(k.get("relu") for k in ran)  # (BatchNorm's multiply-add may run: no ReLU there)
    got = _step(masker, x, "kernel", monkeypatch)
    assert sum(bool(k.get("relu")) for k in ran) == 2  # one pass per block
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(got[1], ref[1]):
        assert _rel(a, b) < 1e-5
    for a, b in zip(got[2], ref[2]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_under_bf16_autocast_the_gradients_are_as_close_to_float32_as_the_modules(
        masker: LearnedMasker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one pass adds the float32 bias before rounding once (autocast rounds the bias to bf16
    first): each parameter's bf16 gradient is within 1.25x of the modules' distance to the float32
    gradient (plus 1e-3), on a masker whose bf16 gradients differ from float32 by 1-7%."""
    x = torch.randn(3, 3, 20, 18, generator=torch.Generator().manual_seed(2))
    exact = _step(masker, x, "torch", monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mods = _step(masker, x, "torch", monkeypatch)
        one = _step(masker, x, "kernel", monkeypatch)
    assert one[0].dtype == mods[0].dtype
    for a, b, e in zip(one[1], mods[1], exact[1]):
        assert _rel(a, e) <= 1.25 * _rel(b, e) + 1e-3


def test_the_modules_run_by_default_off_cuda_and_for_an_edited_net(masker: LearnedMasker,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bias_relu, "bias_relu", lambda *a: pytest.fail("the one pass ran"))
    import egl.maskers.learned as learned

    monkeypatch.setattr(learned, "bias_relu", lambda *a: pytest.fail("the one pass ran"))
    x = torch.randn(2, 3, 8, 8)
    assert _bias_relu.CONFIG["mode"] == "torch"
    masker(x).sum().backward()
    monkeypatch.setitem(_bias_relu.CONFIG, "mode", "auto")  # CUDA only
    masker(x).sum().backward()
    monkeypatch.setitem(_bias_relu.CONFIG, "mode", "kernel")
    edited = copy.deepcopy(masker)
    edited.net[1] = nn.GELU()  # not a ReLU: the fused form would compute something else
    edited(x).sum().backward()
    monkeypatch.setitem(_bias_relu.CONFIG, "mode", "fast")
    with pytest.raises(egl.InputError, match=r"CONFIG\['mode'\].*'auto', 'torch', 'kernel'.*'fast'"):
        masker(x)


def test_bias_relu_keeps_nan_works_in_any_layout_and_passes_the_relus_gradient() -> None:
    """NaN stays NaN (as torch.relu); an NCHW map takes PyTorch's ops (same values); gradients of
    ``h`` and ``bias`` equal autograd's through ``relu(h + bias)``."""
    gen = torch.Generator().manual_seed(3)
    for layout in (torch.channels_last, torch.contiguous_format):
        h0 = torch.randn(2, 5, 4, 6, generator=gen).contiguous(memory_format=layout)
        h0[0, 1, 2, 3] = float("nan")
        b0 = torch.randn(5, generator=gen)
        h, b = h0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        out = bias_relu(h.clone(), b)  # (into a copy: the pass writes into its input)
        h2, b2 = h0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        want = torch.relu(h2 + b2.view(1, -1, 1, 1))
        assert torch.isnan(out[0, 1, 2, 3])
        torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6, equal_nan=True)
        g = torch.randn(out.shape, generator=gen)
        g[0, 1, 2, 3] = 0.0
        got, ref = torch.autograd.grad(out, [h, b], g), torch.autograd.grad(want, [h2, b2], g)
        for a, c in zip(got, ref):
            torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6, equal_nan=True)
