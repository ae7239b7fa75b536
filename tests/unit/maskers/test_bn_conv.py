"""egl.maskers._bn_conv.bn_conv: ``conv(bn(x))`` keeping only ``x`` for the backward."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

import egl
from egl.maskers import LearnedMasker
from egl.maskers._bn_conv import bn_conv


def _pair(c: int = 6, out: int = 4, **conv_kw: object) -> tuple[nn.BatchNorm2d, nn.Conv2d]:
    torch.manual_seed(0)
    bn, conv = nn.BatchNorm2d(c), nn.Conv2d(c, out, 3, **conv_kw)  # type: ignore[arg-type]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn, conv


def _run(fused: bool, bn: nn.BatchNorm2d, conv: nn.Conv2d, x: torch.Tensor, steps: int = 2) -> tuple:
    x = x.clone().requires_grad_(True)
    for _ in range(steps):  # running statistics evolve over calls
        out = bn_conv(x, bn, conv) if fused else conv(bn(x))
    g = torch.linspace(-1, 1, out.numel()).view_as(out)
    out.backward(g.to(out.dtype))
    grads = [x.grad] + [p.grad for p in (*bn.parameters(), *conv.parameters())]
    return out.detach(), grads, [b.clone() for b in bn.buffers()]


@pytest.mark.parametrize("conv_kw", [{"padding": 1}, {"padding": 2, "stride": 2, "dilation": 2, "groups": 2,
                                                       "bias": False}])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("stats", ["native", "kernel"])  # "kernel": egl.kernels.bn_stats on channels-last maps
def test_matches_conv_of_batchnorm(conv_kw: dict, channels_last: bool, momentum: float | None, stats: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """(With the statistics from the kernel, the multiply-add and the backward too:
    egl.kernels.channel_affine and egl.kernels.bn_backward, as on CUDA.)"""
    from egl.maskers import _bn_conv

    from egl.kernels import bn_backward, channel_affine

    monkeypatch.setitem(_bn_conv.CONFIG, "stats", stats)
    monkeypatch.setitem(_bn_conv.CONFIG, "affine", "kernel" if stats == "kernel" else "torch")
    monkeypatch.setitem(_bn_conv.CONFIG, "backward", stats)
    ran: list[str] = []
    for mod, name in ((channel_affine, "channel_affine"), (bn_backward, "bn_backward")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _name=name: ran.append(_name) or _real(*a))
    bn, conv = _pair(**conv_kw)
    bn.momentum = momentum
    x = torch.randn(3, 6, 11, 9) * 2 + 1
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = _run(False, copy.deepcopy(bn), copy.deepcopy(conv), x)
    got = _run(True, bn, conv, x)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    kernels = stats == "kernel" and channel_affine.supported(x)  # (channels-last: the kernels' layout)
    assert sorted(set(ran)) == (["bn_backward", "channel_affine"] if kernels else [])
    rtol = 1e-6 if stats == "native" else 1e-5  # the kernel sums in another order (float64 across bands)
    for a, b in zip(got[2], ref[2]):  # running mean, var and num_batches_tracked
        torch.testing.assert_close(a, b, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("stats", ["native", "kernel"])
def test_without_running_statistics(stats: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.maskers import _bn_conv

    monkeypatch.setitem(_bn_conv.CONFIG, "stats", stats)
    torch.manual_seed(0)
    bn, conv = nn.BatchNorm2d(4, track_running_stats=False), nn.Conv2d(4, 2, 1)
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    ref = _run(False, copy.deepcopy(bn), copy.deepcopy(conv), x)
    got = _run(True, bn, conv, x)
    torch.testing.assert_close(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_under_bf16_autocast_the_convolution_runs_in_bf16() -> None:
    bn, conv = _pair(padding=1)
    x = torch.randn(2, 6, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _run(False, copy.deepcopy(bn), copy.deepcopy(conv), x)
        got = _run(True, bn, conv, x)
    assert got[0].dtype == ref[0].dtype == torch.bfloat16
    torch.testing.assert_close(got[0], ref[0])
    for a, b in zip(got[1], ref[1]):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_refuses_what_it_does_not_compute() -> None:
    bn, conv = _pair(padding=1, padding_mode="reflect")
    with pytest.raises(egl.InputError, match=r"'conv' expected a zero-padded convolution .*padding_mode='reflect'"):
        bn_conv(torch.randn(2, 6, 5, 5), bn, conv)
    with pytest.raises(egl.InputError, match=r"'bn' expected .*affine=False"):
        bn_conv(torch.randn(2, 6, 5, 5), nn.BatchNorm2d(6, affine=False), nn.Conv2d(6, 2, 1))


@pytest.mark.parametrize("stats", ["native", "kernel"])
def test_one_value_per_channel_is_refused_as_batchnorm_refuses_it(stats: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """One image of 1x1: nn.BatchNorm2d raises a ValueError; the fused call wrote NaN into the
    running variance (unbiased variance of one value) and counted the batch."""
    monkeypatch.setitem(egl.maskers._bn_conv.CONFIG, "stats", stats)
    bn, conv = _pair(padding=1)
    x = torch.randn(1, 6, 1, 1)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        conv(bn(x))
    bn, conv = _pair(padding=1)  # (BatchNorm2d counted that batch before refusing it)
    with pytest.raises(egl.InputError, match=r"'x' expected more than one value per channel.*\[1, 6, 1, 1\]"):
        bn_conv(x, bn, conv)
    assert torch.isfinite(bn.running_var).all() and int(bn.num_batches_tracked) == 0
    masker = LearnedMasker().train()
    with pytest.raises(ValueError):
        masker(torch.randn(1, 3, 1, 1))
    assert all(torch.isfinite(b).all() for b in masker.buffers())


def _saved_bytes(fn) -> int:  # noqa: ANN001
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, nn.Parameter) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total[0] += t.untyped_storage().nbytes()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total[0]


@pytest.mark.parametrize("memory_format", ["input", "channels_last"])
def test_learned_masker_keeps_half_and_trains_alike(memory_format: str) -> None:
    torch.manual_seed(0)
    whole = LearnedMasker(width=8, memory_format=memory_format, recompute_bn=False)
    lean = LearnedMasker(width=8, memory_format=memory_format)
    lean.load_state_dict(whole.state_dict())
    x = torch.randn(4, 3, 32, 32)
    full_map = 4 * 8 * 32 * 32 * 4  # bytes of one hidden map
    kept = {m.recompute_bn: _saved_bytes(lambda m=m: m(x)) for m in (whole, lean)}
    assert kept[False] >= 4 * full_map and kept[True] <= 2 * full_map + kept[False] - 4 * full_map
    outs = []
    for m in (whole, lean):
        out = m(x)
        (out * torch.linspace(0, 1, out.numel()).view_as(out)).sum().backward()
        outs.append((out.detach(), [p.grad for p in m.parameters()], list(m.buffers())))
    torch.testing.assert_close(outs[1][0], outs[0][0])
    for a, b in zip(outs[1][1] + outs[1][2], outs[0][1] + outs[0][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # inference and eval take the plain path
        torch.testing.assert_close(lean.eval()(x), whole.eval()(x))
    assert "recompute_bn=True" in repr(lean)


def test_recompute_bn_must_be_a_bool() -> None:
    with pytest.raises(egl.InputError, match=r"'recompute_bn' expected True or False, got 1"):
        LearnedMasker(recompute_bn=1)  # type: ignore[arg-type]


def test_frozen_replaced_or_hooked_batchnorms_run_as_plain_modules() -> None:
    """Only a plain BatchNorm2d in training mode takes the fused path: one in eval mode keeps
    its running statistics (as freeze_batchnorm expects), a subclass or a hooked module runs
    as itself."""
    torch.manual_seed(0)
    ref = LearnedMasker(width=4, recompute_bn=False)
    lean = LearnedMasker(width=4)
    lean.load_state_dict(ref.state_dict())
    for m in (ref, lean):
        m.net[2].eval()  # the first BatchNorm frozen
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(lean(x), ref(x))
    assert int(lean.net[2].num_batches_tracked) == 0 and int(lean.net[5].num_batches_tracked) == 1
    seen = []
    lean.net[5].register_forward_hook(lambda mod, inp, out: seen.append(out.shape))
    lean(x)
    assert seen == [(2, 4, 8, 8)]
    from egl.maskers._bn_conv import fusable

    class MyBN(nn.BatchNorm2d):
        pass

    assert fusable(nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)) and not fusable(MyBN(4), nn.Conv2d(4, 2, 1))
    hooked = LearnedMasker(width=4)  # a hook on the whole stack: the stack runs as modules
    calls = []
    hooked.net.register_forward_hook(lambda mod, inp, out: calls.append(1))
    hooked(x)
    handle = nn.modules.module.register_module_forward_hook(lambda mod, inp, out: None)
    try:  # a global hook: no pair is fused
        assert calls == [1] and not fusable(nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    finally:
        handle.remove()


def test_the_statistics_kernel_path_is_taken_and_a_bad_choice_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.errors import InputError
    from egl.kernels import bn_stats
    from egl.maskers import _bn_conv

    bn, conv = _pair(padding=1)
    x = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last)
    calls = []
    real = bn_stats.bn_stats
    monkeypatch.setattr(bn_stats, "bn_stats", lambda t: calls.append(t.shape) or real(t))
    monkeypatch.setitem(_bn_conv.CONFIG, "stats", "kernel")
    bn_conv(x, bn, conv)
    assert calls == ([x.shape] if bn_stats.supported(x) else [])
    monkeypatch.setitem(_bn_conv.CONFIG, "stats", "fast")
    with pytest.raises(InputError, match="stats"):
        bn_conv(x, bn, conv)
    monkeypatch.setitem(_bn_conv.CONFIG, "stats", "native")
    monkeypatch.setitem(_bn_conv.CONFIG, "affine", "fast")
    with pytest.raises(InputError, match=r"CONFIG\['affine'\].*'auto', 'torch', 'kernel'.*'fast'"):
        bn_conv(x.requires_grad_(True), bn, conv).sum().backward()  # (the backward's multiply-add)
    monkeypatch.setitem(_bn_conv.CONFIG, "affine", "torch")
    monkeypatch.setitem(_bn_conv.CONFIG, "backward", "fast")
    with pytest.raises(InputError, match=r"CONFIG\['backward'\].*'auto', 'native', 'kernel'.*'fast'"):
        bn_conv(x, bn, conv).sum().backward()


def test_auto_statistics_are_native_off_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """``stats``, ``affine`` and ``backward`` ``"auto"`` (the defaults) take the kernels on CUDA
    only: on the CPU, also under the Triton interpreter, the output is BatchNorm's own, bit for
    bit, and the backward PyTorch's."""
    from egl.kernels import bn_stats
    from egl.maskers import _bn_conv

    assert _bn_conv.CONFIG["stats"] == "auto"
    bn, conv = _pair(padding=1)
    x = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(bn_stats, "bn_stats", lambda t: pytest.fail("bn_stats ran on the CPU under 'auto'"))
    from egl.kernels import channel_affine

    assert _bn_conv.CONFIG["affine"] == "auto"
    monkeypatch.setattr(channel_affine, "channel_affine", lambda *a: pytest.fail("the kernel ran on the CPU"))
    from egl.kernels import bn_backward

    assert _bn_conv.CONFIG["backward"] == "auto"
    monkeypatch.setattr(bn_backward, "bn_backward", lambda *a: pytest.fail("the backward kernel ran on the CPU"))
    auto = bn_conv(x, copy.deepcopy(bn), conv)
    bn_conv(x.clone().requires_grad_(True), copy.deepcopy(bn), conv).sum().backward()  # (its multiply-add)
    monkeypatch.setitem(_bn_conv.CONFIG, "stats", "native")
    assert torch.equal(auto, bn_conv(x, copy.deepcopy(bn), conv))
