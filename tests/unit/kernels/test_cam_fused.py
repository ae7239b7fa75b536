"""The epilogue's one-launch forward (``CONFIG["fuse"]``) against its three launches and the reference."""

from __future__ import annotations

import os

import pytest
import torch

import egl
from egl.kernels import cam_epilogue, cam_epilogue_reference, triton_available

needs_interpreter = pytest.mark.skipif(
    not triton_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
    reason="needs Triton with TRITON_INTERPRET=1 (set by tests/conftest.py) or a GPU")

REL_EPS = 1e-6


def _inputs(b: int, c: int, h: int, w: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g).to(dtype), torch.randn(b, c, generator=g)


@needs_interpreter
@pytest.mark.parametrize("relu,normalize", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])  # (bf16 tl.dot: not modelled by the interpreter)
@pytest.mark.parametrize("case", [(4, 64, 7, 7, 64, 64), (4, 16, 5, 3, 17, 29), (4, 24, 14, 14, 40, 30)])
def test_one_launch_equals_the_three_launches_bit_for_bit(case: tuple, dtype: torch.dtype, relu: bool,
                                                          normalize: bool) -> None:
    """The same functions in the same order (one split of the grouped sum per sample: 4 samples on
    the interpreter's 4 "multiprocessors" with one program each): maps, low-resolution map, range
    and its positions identical."""
    from egl.kernels import _cam_triton

    b, c, h, w, hh, ww = case
    a, wt = _inputs(b, c, h, w, dtype)
    three = _cam_triton.forward(a, wt, (hh, ww), 1.0 / (h * w), relu, normalize, REL_EPS,
                                {"reduce": "grouped", "programs_per_sm": 1, "write_cols": 256})
    one = _cam_triton.forward(a, wt, (hh, ww), 1.0 / (h * w), relu, normalize, REL_EPS, {"fuse": "on"})
    names = ("maps", "low", "range", "positions") if normalize else ("maps", "low")
    for name, x, y in zip(names, three, one):
        assert torch.equal(x, y), name
    ref = cam_epilogue_reference(a.float(), wt, (hh, ww), scale=1.0 / (h * w), relu=relu, normalize=normalize)
    torch.testing.assert_close(one[0], ref, atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_one_launch_with_a_flat_map_a_nan_and_a_batch_of_one() -> None:
    """All-zero activations give all-zero maps; a NaN gives that sample zeros and the others their
    maps (as the three launches do); a batch of one, many small write tiles."""
    from egl.kernels import _cam_triton

    a, wt = _inputs(3, 32, 7, 7, torch.float16, seed=3)
    a[0] = 0
    a[1, 5, 2, 2] = float("nan")
    three = _cam_triton.forward(a, wt, (50, 50), 1.0, True, True, REL_EPS)
    one = _cam_triton.forward(a, wt, (50, 50), 1.0, True, True, REL_EPS, {"fuse": "on", "fuse_write_rows": 8,
                                                                          "fuse_write_cols": 16})
    assert torch.equal(one[0][0], torch.zeros(1, 50, 50)) and torch.equal(one[0][1], torch.zeros(1, 50, 50))
    torch.testing.assert_close(one[0], three[0], atol=1e-6, rtol=0)
    single = _cam_triton.forward(a[2:], wt[2:], (9, 11), 1.0, False, True, REL_EPS, {"fuse": "on"})
    torch.testing.assert_close(single[0], cam_epilogue_reference(a[2:].float(), wt[2:], (9, 11), scale=1.0,
                                                                 relu=False), atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_where_one_launch_does_not_apply_the_three_launches_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Channels-last activations, channels that form no whole grouped row (12 fp16 channels of
    7x7), the gathering write: ``applies`` says no and the call is the three launches'."""
    from egl.kernels import _cam_triton
    from egl.kernels._cam_triton_fused import applies

    cfg = {**_cam_triton.CONFIG, "fuse": "on"}
    a, wt = _inputs(2, 16, 7, 7, torch.float16)
    assert applies(a, cfg)
    assert not applies(a.contiguous(memory_format=torch.channels_last), cfg)
    assert not applies(_inputs(2, 12, 7, 7, torch.float16)[0], cfg)
    assert not applies(a, {**cfg, "write": "gather"})
    assert not applies(a, {**cfg, "fuse": "off"})
    assert not applies(a, {**cfg, "reduce": "dot"})  # an explicit other channel sum: the three launches
    launched = []
    real = _cam_triton.reduce_stage
    monkeypatch.setattr(_cam_triton, "reduce_stage", lambda *args: launched.append(1) or real(*args))
    _cam_triton.forward(a.contiguous(memory_format=torch.channels_last), wt, (16, 16), 1.0, True, True, REL_EPS,
                        {"fuse": "on"})
    assert launched


@needs_interpreter
def test_the_backward_after_one_launch_matches_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.kernels import _cam_triton

    monkeypatch.setitem(_cam_triton.CONFIG, "fuse", "on")
    a, wt = _inputs(2, 16, 7, 7, torch.float32, seed=5)
    a1, w1 = a.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    a2, w2 = a.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    out = cam_epilogue(a1, w1, (20, 20), scale=0.1, backend="triton")
    ref = cam_epilogue_reference(a2, w2, (20, 20), scale=0.1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(6))
    got, want = torch.autograd.grad(out, [a1, w1], g), torch.autograd.grad(ref, [a2, w2], g)
    for x, y in zip(got, want):
        assert float((x - y).norm() / y.norm()) < 1e-5


@pytest.mark.skipif(not triton_available(), reason="needs Triton")
def test_auto_fuses_where_the_h200_measured_it_faster() -> None:
    """16-bit maps up to 7x7, float32 up to 14x14 (float32 28x28 sums its channels faster through
    cuBLAS), with 1.8-2.0 samples per multiprocessor (batch 256 of 132: the one launch runs in steps
    of a sample per multiprocessor and lost at 64, 132 and 512); off CUDA never (the interpreter is
    not timed)."""
    from egl.kernels import _cam_triton
    from egl.kernels._cam_triton_fused import applies, auto_fuses

    cfg = dict(_cam_triton.CONFIG)
    assert cfg["fuse"] == "auto"
    bf16, fp32 = torch.bfloat16, torch.float32
    assert auto_fuses(bf16, 49, 256, 132, cfg) and auto_fuses(fp32, 196, 256, 132, cfg)
    assert not auto_fuses(bf16, 196, 256, 132, cfg) and not auto_fuses(fp32, 784, 256, 132, cfg)
    assert not auto_fuses(bf16, 49, 64, 132, cfg)  # half the multiprocessors would idle
    assert auto_fuses(bf16, 49, 238, 132, cfg) and auto_fuses(bf16, 49, 264, 132, cfg)
    assert not auto_fuses(bf16, 49, 132, 132, cfg) and not auto_fuses(bf16, 49, 236, 132, cfg)
    assert not auto_fuses(bf16, 49, 265, 132, cfg) and not auto_fuses(fp32, 196, 512, 132, cfg)  # a third step
    assert not auto_fuses(torch.float64, 49, 256, 132, cfg)
    assert not applies(torch.zeros(256, 64, 7, 7, dtype=bf16), cfg)  # on the CPU


@needs_interpreter
def test_an_unknown_fuse_setting_is_named() -> None:
    from egl.kernels import _cam_triton

    a, wt = _inputs(1, 8, 4, 4, torch.float32)
    with pytest.raises(egl.InputError, match=r"config\['fuse'\].*'auto', 'off', 'on'.*'yes'"):
        _cam_triton.forward(a, wt, (8, 8), 1.0, True, True, REL_EPS, {"fuse": "yes"})
