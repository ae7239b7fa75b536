"""The fused Grad-CAM epilogue: Triton kernel (run by the interpreter on CPU) vs the PyTorch reference."""

from __future__ import annotations

import os

import pytest
import torch

import egl
from egl.kernels import cam_epilogue, cam_epilogue_reference, triton_available

needs_interpreter = pytest.mark.skipif(
    not triton_available() or os.environ.get("TRITON_INTERPRET", "0") in ("", "0"),
    reason="needs Triton with TRITON_INTERPRET=1 (set by tests/conftest.py) or a GPU")

CASES = [  # (B, C, h, w, H, W)
    (3, 16, 4, 4, 64, 64),
    (1, 7, 7, 7, 224, 224),    # batch of one, odd channels, ResNet-like 7x7
    (2, 33, 5, 3, 17, 29),     # odd, non-square sizes, non-integer scale
    (2, 8, 6, 6, None, None),  # no upsampling
    (2, 300, 3, 5, 6, 10),     # channels spill over several blocks
    (2, 5, 1, 1, 8, 8),        # a single feature position (Triton specialises sizes of 1)
    (1, 4, 40, 40, 20, 30),    # more than 1024 positions (several position blocks); downsampling
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: the analytic backward sums in another order than autograd's, so
    gradients with cancellations agree to rounding relative to their size, not element by element."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _inputs(b: int, c: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randn(b, c, generator=g)


@needs_interpreter
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_values_match_reference(case: tuple, relu: bool, normalize: bool) -> None:
    b, c, h, w, hh, ww = case
    a, wt = _inputs(b, c, h, w)
    size = None if hh is None else (hh, ww)
    scale = 1.0 / (h * w)
    ref = cam_epilogue_reference(a, wt, size, scale=scale, relu=relu, normalize=normalize)
    out = cam_epilogue(a, wt, size, scale=scale, relu=relu, normalize=normalize, backend="triton")
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("relu,normalize", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("case", CASES)
def test_gradients_match_reference(case: tuple, relu: bool, normalize: bool) -> None:
    b, c, h, w, hh, ww = case
    a, wt = _inputs(b, c, h, w, seed=1)
    size = None if hh is None else (hh, ww)
    grads = []
    for backend in ("torch", "triton"):
        a1, w1 = a.clone().requires_grad_(True), wt.clone().requires_grad_(True)
        out = cam_epilogue(a1, w1, size, scale=0.1, relu=relu, normalize=normalize, backend=backend)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(2))).sum().backward()
        grads.append((a1.grad, w1.grad))
    assert _rel(grads[1][0], grads[0][0]) < 1e-5
    assert _rel(grads[1][1], grads[0][1]) < 1e-5


@needs_interpreter
@pytest.mark.parametrize("grads", ["triton", "torch"])
def test_gradient_of_one_input_only_and_of_channels_last_bf16_activations(monkeypatch: pytest.MonkeyPatch,
                                                                          grads: str) -> None:
    """Both ways of forming ``d acts`` and ``d w`` (``CONFIG["grads"]``)."""
    from egl.kernels import _cam_triton

    monkeypatch.setitem(_cam_triton.CONFIG, "grads", grads)
    a, wt = _inputs(2, 24, 5, 6, seed=3)
    g = torch.randn(2, 1, 20, 18, generator=torch.Generator().manual_seed(4))
    a1 = a.clone().requires_grad_(True)
    (cam_epilogue(a1, wt, (20, 18), backend="triton") * g).sum().backward()
    a2 = a.clone().requires_grad_(True)
    (cam_epilogue_reference(a2, wt, (20, 18)) * g).sum().backward()
    assert _rel(a1.grad, a2.grad) < 1e-5
    # channels-last, bf16 activations (what autocast produces): maps and both gradients
    cl = a.to(torch.bfloat16).to(memory_format=torch.channels_last).requires_grad_(True)
    w3 = wt.clone().requires_grad_(True)
    out = cam_epilogue(cl, w3, (20, 18), backend="triton")
    ref = cam_epilogue_reference(a.to(torch.bfloat16).float(), wt, (20, 18))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (out * g).sum().backward()
    assert cl.grad.dtype == torch.bfloat16 and w3.grad.dtype == torch.float32
    assert cl.grad.is_contiguous(memory_format=torch.channels_last)
    a4 = a.to(torch.bfloat16).float().requires_grad_(True)
    w4 = wt.clone().requires_grad_(True)
    (cam_epilogue_reference(a4, w4, (20, 18)) * g).sum().backward()
    # d acts: rounded once to bf16 (2^-9 relative at most); d w: summed in float32
    assert _rel(cl.grad.float(), a4.grad) < 4e-3 and _rel(w3.grad, w4.grad) < 1e-5


@needs_interpreter
def test_many_channel_splits_match(monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.kernels import _cam_triton

    monkeypatch.setitem(_cam_triton.CONFIG, "reduce_tile", 32)  # 2 channels a tile: many programs per sample
    monkeypatch.setitem(_cam_triton.CONFIG, "programs_per_sm", 64)
    a, wt = _inputs(2, 70, 4, 4, seed=5)
    torch.testing.assert_close(cam_epilogue(a, wt, (9, 9), backend="triton"),
                               cam_epilogue_reference(a, wt, (9, 9)), atol=1e-5, rtol=1e-5)


@needs_interpreter
def test_all_zero_maps_give_zeros_not_nan() -> None:
    a = torch.zeros(2, 4, 3, 3)
    out = cam_epilogue(a, torch.ones(2, 4), (8, 8), backend="triton")
    assert torch.equal(out, torch.zeros(2, 1, 8, 8))
    neg = cam_epilogue(torch.ones(1, 4, 3, 3), -torch.ones(1, 4), (8, 8), backend="triton")  # all negative: ReLU -> 0
    assert torch.equal(neg, torch.zeros(1, 1, 8, 8))
    tiny = cam_epilogue(torch.rand(1, 4, 3, 3) * 1e-5, torch.ones(1, 4), (8, 8), backend="triton")
    assert float(tiny.max()) == pytest.approx(1.0) and float(tiny.min()) == 0.0  # relative epsilon


def test_auto_uses_the_reference_on_cpu_and_checks_inputs() -> None:
    a, wt = _inputs(2, 8, 4, 4)
    torch.testing.assert_close(cam_epilogue(a, wt, (16, 16)), cam_epilogue_reference(a, wt, (16, 16)))
    with pytest.raises(egl.InputError, match="'weights' expected shape \\[2, 8\\]"):
        cam_epilogue(a, wt[:, :4], (16, 16))
    with pytest.raises(egl.InputError, match="'backend' expected one of"):
        cam_epilogue(a, wt, backend="cuda")


def test_grad_cam_equals_the_epilogue_of_its_own_parts() -> None:
    from _helpers import make_model

    from egl.explainers import grad_cam

    model = make_model("test_resnet", output_stride=16)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    w = model.get_classifier().weight[torch.tensor([1, 3])]
    expected = cam_epilogue(feats, w, (64, 64), scale=1.0 / (feats.shape[-2] * feats.shape[-1]))
    torch.testing.assert_close(grad_cam(model, x, [1, 3]), expected)


@needs_interpreter
@pytest.mark.parametrize("name", ["test_resnet", "test_convnext", "test_vit"])
def test_grad_cam_on_the_triton_backend_matches_and_trains(name: str) -> None:
    """Every Grad-CAM path through the fused kernel: same maps, same parameter gradients."""
    from _helpers import make_model

    from egl.explainers import GradCAM

    model = make_model(name)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    grads = {}
    for backend in ("torch", "triton"):
        model.zero_grad()
        sal = GradCAM(model, backend=backend).explain(x, y, create_graph=True).saliency
        (sal * torch.linspace(0, 1, sal.numel()).view_as(sal)).sum().backward()
        grads[backend] = (sal.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(grads["triton"][0], grads["torch"][0], atol=1e-5, rtol=1e-5)
    assert len(grads["triton"][1]) == len(grads["torch"][1]) > 0
    for a, b in zip(grads["triton"][1], grads["torch"][1]):
        assert _rel(a, b) < 1e-5


@needs_interpreter
@pytest.mark.parametrize("relu,normalize", [(True, True), (False, False)])
def test_triton_backward_equals_its_pytorch_formulation(relu: bool, normalize: bool) -> None:
    from egl.explainers._postprocess import REL_EPS
    from egl.kernels import _cam_triton, _cam_triton_backward
    from egl.kernels.cam_epilogue import _grad_low_torch

    a, wt = _inputs(3, 12, 7, 5, seed=6)
    out, low, stats, argext = _cam_triton.forward(a, wt, (45, 23), 0.5, relu, normalize, REL_EPS)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    args = (g, low, stats, argext, (7, 5), (45, 23), 0.5, relu, normalize, REL_EPS)
    assert _rel(_cam_triton_backward.grad_low(*args), _grad_low_torch(*args)) < 1e-6


@needs_interpreter
def test_maps_wider_than_the_triton_backward_use_the_pytorch_backward() -> None:
    from egl.kernels import _cam_triton_backward

    assert not _cam_triton_backward.supported(3, 70)
    a, wt = _inputs(1, 4, 3, 70, seed=8)
    a1, w1 = a.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    g = torch.randn(1, 1, 6, 35, generator=torch.Generator().manual_seed(9))
    (cam_epilogue(a1, w1, (6, 35), backend="triton") * g).sum().backward()
    a2, w2 = a.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    (cam_epilogue_reference(a2, w2, (6, 35)) * g).sum().backward()
    assert _rel(a1.grad, a2.grad) < 1e-5 and _rel(w1.grad, w2.grad) < 1e-5


@needs_interpreter
def test_inference_builds_no_autograd_node() -> None:
    a, wt = _inputs(2, 8, 4, 4)
    assert cam_epilogue(a, wt, (8, 8), backend="triton").grad_fn is None
    with torch.no_grad():
        assert cam_epilogue(a.requires_grad_(True), wt, (8, 8), backend="triton").grad_fn is None
    assert cam_epilogue(a, wt, (8, 8), backend="triton").grad_fn is not None


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # bf16 tl.dot: not modelled by the interpreter
def test_the_dot_channel_sum_matches_the_loop(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """``reduce="dot"`` (the default on CUDA for 16-bit activations; benchmarks/kernel.py checks
    bf16 there). The fp32 weights are split in two 16-bit parts, so the sum is as accurate as
    with fp32 weights, not as with the weights rounded to the activations' dtype."""
    from egl.kernels import _cam_triton

    a, wt = _inputs(2, 40, 5, 5, seed=10)
    a = a.to(dtype)
    ref = torch.einsum("bc,bchw->bhw", wt.double(), a.double()).flatten(1)
    rounded = torch.einsum("bc,bchw->bhw", wt.to(dtype).double(), a.double()).flatten(1)
    loop = _cam_triton.reduce_stage(a, wt, {**_cam_triton.CONFIG, "reduce": "loop"}).sum(1)
    dot = _cam_triton.reduce_stage(a, wt, {**_cam_triton.CONFIG, "reduce": "dot"}).sum(1)
    err = float((dot.double() - ref).norm() / ref.norm())
    assert err < 1e-6, err
    if dtype != torch.float32:  # one 16-bit row would be 100x worse
        assert float((rounded - ref).norm() / ref.norm()) > 100 * err
    torch.testing.assert_close(loop.double(), ref, atol=1e-4, rtol=1e-4)
    monkeypatch.setitem(_cam_triton.CONFIG, "reduce", "dot")
    torch.testing.assert_close(cam_epilogue(a, wt, (11, 13), backend="triton"),
                               cam_epilogue_reference(a.float(), wt, (11, 13)), atol=1e-5, rtol=1e-4)


def test_channel_groups_fill_whole_16_byte_words() -> None:
    from egl.kernels._cam_triton import channel_group

    assert [channel_group(512, hw, 2) for hw in (49, 196, 784, 64)] == [8, 2, 1, 1]
    assert [channel_group(512, hw, 4) for hw in (49, 196, 15)] == [4, 1, 4]
    assert channel_group(12, 49, 2) == 0  # 8 does not divide 12: no group (the "dot" sum runs)
    assert channel_group(512, 49, 1) == 0  # 16 one-byte channels: hi and lo would need 32 rows


@needs_interpreter
@pytest.mark.parametrize("small", [64, 0])  # maps of <= 64 positions with their own tile and warps, or not
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # bf16 tl.dot: not modelled by the interpreter
@pytest.mark.parametrize("b,c,h,w", [(2, 40, 7, 7), (3, 64, 14, 14), (1, 24, 5, 3), (2, 16, 4, 4)])
def test_the_grouped_channel_sum_matches_float64(b: int, c: int, h: int, w: int, dtype: torch.dtype,
                                                 small: int) -> None:
    """``reduce="grouped"``: rows of several whole channels (two column blocks at 7x7 fp16:
    8 x 49 = 392 values), ``G`` partial maps per program, summed by the stats stage; small maps
    (``small_map_positions``) with their own tile and warps."""
    from egl.kernels import _cam_triton

    a, wt = _inputs(b, c, h, w, seed=c + h)
    a = a.to(dtype)
    ref = torch.einsum("bc,bchw->bhw", wt.double(), a.double()).flatten(1)
    cfg = {**_cam_triton.CONFIG, "reduce": "grouped", "small_map_positions": small, "small_map_tile": 256}
    part = _cam_triton.reduce_stage(a, wt, cfg)
    group = _cam_triton.channel_group(c, h * w, a.element_size())
    assert part.shape[0] == b and part.shape[1] % group == 0 and part.shape[2] == h * w
    assert float((part.sum(1).double() - ref).norm() / ref.norm()) < 1e-6


@needs_interpreter
def test_the_grouped_channel_sum_of_samples_not_back_to_back() -> None:
    """The first 40 of 64 channels: each sample's rows are whole, the samples 64 channels apart."""
    from egl.kernels import _cam_triton

    a, wt = _inputs(3, 64, 7, 7, seed=8)
    a = a.half()[:, :40]
    wt = wt[:, :40]
    assert a.stride(1) == 49 and a.stride(0) != 40 * 49
    ref = torch.einsum("bc,bchw->bhw", wt.double(), a.double()).flatten(1)
    part = _cam_triton.reduce_stage(a, wt, {**_cam_triton.CONFIG, "reduce": "grouped"})
    assert part.shape[1] % 8 == 0 and float((part.sum(1).double() - ref).norm() / ref.norm()) < 1e-6


@needs_interpreter
def test_the_grouped_channel_sum_splits_rows_and_serves_the_epilogue(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of one with many splits, several row tiles per split (256 rows of 8 channels):
    maps and gradients as the reference's."""
    from egl.kernels import _cam_triton

    monkeypatch.setitem(_cam_triton.CONFIG, "small_map_tile", 32)  # 16-row tiles (7x7: a small map) ...
    monkeypatch.setitem(_cam_triton.CONFIG, "programs_per_sm", 1)  # ... 4 splits (4 "SMs" on CPU), 4 tiles each
    monkeypatch.setitem(_cam_triton.CONFIG, "reduce", "grouped")
    a, wt = _inputs(1, 2048, 7, 7, seed=4)
    a = a.half().requires_grad_(True)
    wt.requires_grad_(True)
    part = _cam_triton.reduce_stage(a.detach(), wt.detach(), dict(_cam_triton.CONFIG))
    assert part.shape == (1, 4 * 8, 49)
    out = cam_epilogue(a, wt, (17, 23), backend="triton")
    ref_a, ref_w = a.detach().float().requires_grad_(True), wt.detach().clone().requires_grad_(True)
    ref = cam_epilogue_reference(ref_a, ref_w, (17, 23))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(ref)
    ga, gw = torch.autograd.grad(out, [a, wt], g)
    ra, rw = torch.autograd.grad(ref, [ref_a, ref_w], g)
    assert _rel(ga.float(), ra) < 2e-3 and _rel(gw, rw) < 1e-4  # (d acts rounded to fp16 on its write)


@needs_interpreter
def test_the_grouped_channel_sum_falls_back_to_dot_where_no_group_fits() -> None:
    """Channels that no group of 16-byte rows divides (12 fp16 channels of 7x7), or gaps between
    channels (every other channel of a larger map): the one-channel rows of ``"dot"``."""
    from egl.kernels import _cam_triton

    for a in (_inputs(2, 12, 7, 7, seed=5)[0].half(), _inputs(2, 32, 7, 7, seed=6)[0].half()[:, ::2]):
        wt = torch.randn(2, a.shape[1])
        grouped = _cam_triton.reduce_stage(a, wt, {**_cam_triton.CONFIG, "reduce": "grouped"})
        dot = _cam_triton.reduce_stage(a, wt, {**_cam_triton.CONFIG, "reduce": "dot"})
        assert torch.equal(grouped, dot)


@needs_interpreter
def test_reduce_auto_takes_the_loop_off_cuda_and_bad_choices_are_named() -> None:
    from egl.errors import InputError
    from egl.kernels import _cam_triton

    a, wt = _inputs(2, 12, 4, 4, seed=3)
    auto = _cam_triton.reduce_stage(a, wt, {**_cam_triton.CONFIG, "reduce": "auto"})
    loop = _cam_triton.reduce_stage(a, wt, {**_cam_triton.CONFIG, "reduce": "loop"})
    assert torch.equal(auto, loop)
    with pytest.raises(InputError, match="reduce"):
        _cam_triton.reduce_stage(a, wt, {**_cam_triton.CONFIG, "reduce": "matmul"})


@needs_interpreter
@pytest.mark.parametrize("relu,normalize", [(True, True), (True, False), (False, True)])
def test_nan_activations_give_what_the_reference_gives(relu: bool, normalize: bool) -> None:
    """A NaN in a sample: normalised, its map is all zeros (as minmax_normalize makes it); not
    normalised, the NaN spreads as in PyTorch. Other samples are untouched."""
    a, wt = _inputs(2, 6, 4, 4, seed=11)
    a[0, 2, 1, 1] = float("nan")
    ref = cam_epilogue_reference(a, wt, (9, 9), relu=relu, normalize=normalize)
    out = cam_epilogue(a, wt, (9, 9), relu=relu, normalize=normalize, backend="triton")
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5, equal_nan=True)
    if normalize:
        assert torch.equal(out[0], torch.zeros_like(out[0]))


@needs_interpreter
def test_an_empty_batch_gives_an_empty_map() -> None:
    out = cam_epilogue(torch.zeros(0, 4, 3, 3), torch.zeros(0, 4), (8, 8), backend="triton")
    assert out.shape == (0, 1, 8, 8)


@needs_interpreter
@pytest.mark.parametrize("width", [5, 72])  # the Triton backward, and the PyTorch one (sides > 64)
def test_nan_activations_give_a_zero_map_and_zero_gradient(width: int) -> None:
    """A sample with a NaN: all-zero map (as the reference) and a zero activation gradient, not
    NaN (PyTorch's autograd of the reference spreads NaN into it); the stored extreme positions
    stay valid pixels, which the PyTorch formulation of the backward indexes."""
    a, wt = _inputs(1, 3, 2, width, seed=12)
    a[0, 1, 0, 3] = float("nan")
    a1 = a.clone().requires_grad_(True)
    out = cam_epilogue(a1, wt, (4, width + 8), backend="triton")
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(a1.grad, torch.zeros_like(a1.grad))


@needs_interpreter
@pytest.mark.parametrize("write", ["separable", "gather"])
@pytest.mark.parametrize("case,tile", [(CASES[0], (32, 32)), (CASES[1], (32, 32)), (CASES[2], (32, 32)),
                                       (CASES[6], (32, 32)), (CASES[2], (4, 8)), (CASES[6], (8, 4))])
def test_both_write_stages_match_the_reference_and_peak_where_stats_says(case: tuple, tile: tuple, write: str) -> None:
    """The separable write (rows upsampled along x, then a lerp along y) and the gathering one
    give the reference's maps (also with tiles
    smaller than the map: padded rows), and each normalised map is exactly 0 at its stored minimum and
    largest at its stored maximum (1 up to the rounding of ``x · (1/x)``): the stats stage
    evaluates the extremes with the same function as the write stage."""
    from egl.explainers._postprocess import REL_EPS
    from egl.kernels import _cam_triton

    b, c, h, w, hh, ww = case
    a, wt = _inputs(b, c, h, w, seed=13)
    cfg = {"write": write, "write_rows": tile[0], "write_cols": tile[1]}
    out, low, stats, argext = _cam_triton.forward(a, wt, (hh, ww), 1.0 / (h * w), False, True, REL_EPS, cfg)
    torch.testing.assert_close(out, cam_epilogue_reference(a, wt, (hh, ww), scale=1.0 / (h * w), relu=False),
                               atol=1e-5, rtol=1e-5)
    flat = out.flatten(1)
    at = flat.gather(1, argext.long())
    assert torch.equal(flat.amin(1), torch.zeros(b)) and torch.equal(at[:, 0], torch.zeros(b))
    assert torch.equal(at[:, 1], flat.amax(1)) and bool((at[:, 1] >= 1 - 2**-23).all())


@needs_interpreter
@pytest.mark.parametrize("block,warps", [(16, 1), (4096, 16)])
def test_the_stats_stage_gives_the_same_maps_and_extremes_at_any_step(block: int, warps: int) -> None:
    """``stats_block`` / ``stats_warps`` (the GPU benchmark sweeps them) change how many positions
    the stats program walks per step, not what it finds: 16 takes many steps over the rows and
    candidates (and masked tails), 4096 one."""
    from egl.explainers._postprocess import REL_EPS
    from egl.kernels import _cam_triton

    b, c, h, w, hh, ww = CASES[2]
    a, wt = _inputs(b, c, h, w, seed=15)
    ref = _cam_triton.forward(a, wt, (hh, ww), 1.0 / (h * w), True, True, REL_EPS)
    got = _cam_triton.forward(a, wt, (hh, ww), 1.0 / (h * w), True, True, REL_EPS,
                              {"stats_block": block, "stats_warps": warps})
    for r, g in zip(ref, got):
        assert torch.equal(r, g)


@needs_interpreter
def test_an_unknown_write_stage_is_named() -> None:
    from egl.kernels import _cam_triton

    a, wt = _inputs(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"config\['write'\].*'separable', 'gather'.*'tiles'"):
        _cam_triton.forward(a, wt, (8, 8), 1.0, True, True, 1e-6, {"write": "tiles"})


@needs_interpreter
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_channel_sum_with_64_bit_offsets_matches(monkeypatch: pytest.MonkeyPatch, channels_last: bool) -> None:
    """Tiles whose offsets would overflow int32 take 64-bit offsets (forced here by lowering the limit)."""
    from egl.kernels import _cam_triton

    a, wt = _inputs(2, 12, 5, 3, seed=14)
    if channels_last:
        a = a.contiguous(memory_format=torch.channels_last)
    narrow = _cam_triton.reduce_stage(a, wt, dict(_cam_triton.CONFIG)).sum(1)
    monkeypatch.setattr(_cam_triton, "_INT32_LIMIT", 1)
    wide = _cam_triton.reduce_stage(a, wt, dict(_cam_triton.CONFIG)).sum(1)
    assert torch.equal(wide, narrow)
    torch.testing.assert_close(wide, torch.einsum("bc,bchw->bhw", wt, a).flatten(1), atol=1e-5, rtol=1e-5)


@needs_interpreter
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_the_one_pass_input_gradients_match_the_two_ops(monkeypatch: pytest.MonkeyPatch, needs: tuple,
                                                        layout: str) -> None:
    """``input_grads``: ``d acts = w ⊗ d`` in the activations' layout and ``d w = A · d``, for
    dense, channels-last and non-dense (sliced) activations, many channel splits, odd sizes."""
    from egl.kernels import _cam_triton
    from egl.kernels._cam_triton_backward import input_grads

    monkeypatch.setitem(_cam_triton.CONFIG, "reduce_tile", 64)  # several channel tiles and splits
    g = torch.Generator().manual_seed(15)
    a = torch.randn(3, 37, 5, 7, generator=g)
    if layout == "channels_last":
        a = a.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        a = torch.randn(3, 40, 5, 9, generator=g)[:, 1:38, :, 1:8]
    wt, d = torch.randn(3, 37, generator=g), torch.randn(3, 35, generator=g)
    ga, gw = input_grads(a, wt, d, needs, dict(_cam_triton.CONFIG))
    if needs[0]:
        torch.testing.assert_close(ga, (wt[:, :, None] * d[:, None, :]).view(3, 37, 5, 7))
        assert ga.stride() == torch.empty_like(a).stride()
    else:
        assert ga is None
    if needs[1]:
        torch.testing.assert_close(gw, torch.einsum("bchw,bhw->bc", a, d.view(3, 5, 7)), rtol=1e-5, atol=1e-5)
    else:
        assert gw is None


def test_the_reference_keeps_tiny_weights_on_float16_activations() -> None:
    """Loss-scaled inner gradients come back as float32 weights below float16's range: the
    reference sums in float32 for float16 activations instead of flushing them to zero."""
    a, wt = _inputs(2, 6, 4, 4, seed=16)
    tiny = wt * 1e-9
    out = cam_epilogue_reference(a.half(), tiny, (8, 8), normalize=False, relu=False)
    ref = cam_epilogue_reference(a.half().float(), tiny, (8, 8), normalize=False, relu=False)
    assert out.dtype == torch.float32 and float(out.abs().max()) > 0
    torch.testing.assert_close(out, ref)
    with torch.autocast("cpu", dtype=torch.float16):  # as in fit(precision="fp16")
        torch.testing.assert_close(cam_epilogue_reference(a.half(), tiny, (8, 8), normalize=False, relu=False), ref)


@needs_interpreter
def test_auto_falls_back_to_pytorch_when_a_kernel_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Triton kernel that fails (an untested Triton version): backend="auto" warns once and
    computes the same maths in PyTorch from then on, forward and backward; backend="triton"
    raises the error."""
    import importlib
    import warnings

    from egl.kernels import _cam_triton, _cam_triton_backward

    module = importlib.import_module("egl.kernels.cam_epilogue")  # (the package exports the function by that name)

    monkeypatch.setattr(module, "_TRITON_FAILED", None)
    monkeypatch.setattr(module, "_auto_uses_triton", lambda acts: module._TRITON_FAILED is None)
    a, wt = _inputs(2, 6, 4, 5, seed=17)
    g = torch.randn(2, 1, 9, 11, generator=torch.Generator().manual_seed(18))

    def grads(**kw: object) -> tuple:
        a1, w1 = a.clone().requires_grad_(True), wt.clone().requires_grad_(True)
        out = cam_epilogue(a1, w1, (9, 11), **kw)  # type: ignore[arg-type]
        (out * g).sum().backward()
        return out.detach(), a1.grad, w1.grad

    ref = grads(backend="torch")

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no kernel for you\nsecond line")

    monkeypatch.setattr(_cam_triton_backward, "grad_low", boom)  # the backward fails first
    with pytest.warns(RuntimeWarning, match=r"Triton kernels failed \(RuntimeError: no kernel for you\)"):
        got = grads()
    for x, y in zip(got, ref):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert module._TRITON_FAILED is not None
    monkeypatch.setattr(_cam_triton, "forward", boom)  # given up: "auto" no longer calls the kernels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once only
        for x, y in zip(grads(), ref):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="no kernel for you"):
        grads(backend="triton")
    monkeypatch.setattr(module, "_TRITON_FAILED", None)  # a forward failure falls back too
    with pytest.warns(RuntimeWarning, match="Triton kernels failed"):
        torch.testing.assert_close(cam_epilogue(a, wt, (9, 11)), ref[0], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(module, "_TRITON_FAILED", None)  # running out of memory is not a kernel failure

    def oom(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("out of memory")

    monkeypatch.setattr(_cam_triton, "forward", oom)
    with pytest.raises(torch.OutOfMemoryError):
        cam_epilogue(a, wt, (9, 11))
    assert module._TRITON_FAILED is None
    monkeypatch.setattr(_cam_triton, "forward", boom)  # inside a CUDA graph capture: raised, not given up
    monkeypatch.setattr(module, "capturing", lambda t: True)
    with pytest.raises(RuntimeError, match="no kernel for you"):
        cam_epilogue(a, wt, (9, 11))
    assert module._TRITON_FAILED is None


@pytest.mark.parametrize("dtype,bound", [(torch.bfloat16, 2.0**-14), (torch.float16, 2.0**-18)])
def test_hi_lo_keeps_twice_the_mantissa_of_one_16_bit_part(dtype: torch.dtype, bound: float) -> None:
    from egl.kernels.cam_epilogue import hi_lo

    x = torch.randn(4, 1, 300, generator=torch.Generator().manual_seed(5))
    parts = hi_lo(x, dtype, 1)
    assert parts.dtype == dtype and parts.shape == (4, 2, 300)
    err = (parts.float().sum(1, keepdim=True) - x).norm() / x.norm()
    one = (x.to(dtype).float() - x).norm() / x.norm()
    assert err < bound < one


@needs_interpreter
def test_the_weight_gradient_sums_in_float32_under_autocast() -> None:
    """A backward run inside ``torch.autocast`` must not turn the ``d w`` sum into bf16."""
    a, wt = _inputs(2, 64, 5, 5, seed=12)
    a = a.to(torch.bfloat16).requires_grad_(True)
    w1 = wt.clone().requires_grad_(True)
    g = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(13))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (cam_epilogue(a, w1, (12, 12), backend="triton") * g).sum().backward()
    a2 = a.detach().float().requires_grad_(True)
    w2 = wt.clone().requires_grad_(True)
    (cam_epilogue_reference(a2, w2, (12, 12)) * g).sum().backward()
    assert _rel(w1.grad, w2.grad) < 1e-5


def test_the_pytorch_epilogue_makes_float32_maps_from_bfloat16() -> None:
    """As ``cam_epilogue`` promises (and the Triton kernels do): not maps quantised to bfloat16."""
    a, wt = _inputs(2, 16, 4, 4, seed=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cam_epilogue(a.bfloat16(), wt, (64, 64), backend="torch")
    assert out.dtype == torch.float32
    assert out.unique().numel() > 1000  # bfloat16 has 256 values in [0.5, 1)


@pytest.mark.parametrize("seed", range(4))
def test_bce_gradients_through_the_pytorch_epilogue_under_bfloat16_match_float64(seed: int) -> None:
    """ALIGN's BCE on a min-max normalised map is steep where the map is exactly 0 or 1 (1/eps).
    A map made in bfloat16 is quantised near its maximum, and the large gradients of those pixels
    cancel through the min-max only to bfloat16 precision (the old reference gave NaN or 100x
    gradients here). Now the channel sum and the map are float32, as in the Triton kernels:
    bfloat16 post-ReLU activations under autocast against the same values in float64."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 64, 4, 4, generator=g).relu().bfloat16()
    w = (torch.randn(4, 64, generator=g) * 0.05).bfloat16().float()  # representable: same inputs
    mask = torch.zeros(4, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    bce = egl.create("alignment", "bce")

    def grads(dt: torch.dtype, half: bool) -> tuple[torch.Tensor, torch.Tensor]:
        a1, w1 = a.to(dt).requires_grad_(True), w.to(dt).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            sal = cam_epilogue(a1, w1, (64, 64), scale=1 / 16, backend="torch")
            loss = bce(sal, mask.to(sal.dtype))
        loss.backward()
        return a1.grad, w1.grad

    ref, got = grads(torch.float64, False), grads(torch.bfloat16, True)
    assert _rel(got[0].double(), ref[0]) < 0.05 and _rel(got[1].double(), ref[1]) < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_an_alignment_step_under_autocast_does_not_blow_up(dtype: torch.dtype) -> None:
    """The same through a whole model (resnet18, Grad-CAM with ``create_graph``, BCE), against a
    float64 copy. A 16-bit forward moves this gradient a lot by itself (the loss is steep near
    saturated pixels, and the 4x4 map's ReLU signs and argmax flip between precisions: 5-130%
    over model seeds), so the bound only rules out the 100x blow-up of a quantised map."""
    import copy

    import timm

    from egl._amp import inner_scale
    from egl.explainers import grad_cam

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=5, output_stride=16).train()
    x, y = torch.rand(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    mask = torch.zeros(4, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    bce = egl.create("alignment", "bce")

    def grads(m: torch.nn.Module, xx: torch.Tensor, half: torch.dtype | None, scale: float) -> list[torch.Tensor]:
        with inner_scale(scale if half == torch.float16 else None), \
                torch.autocast("cpu", dtype=half or torch.bfloat16, enabled=half is not None):
            sal = grad_cam(m, xx, y, create_graph=True)
            loss = bce(sal, mask.to(sal.dtype))
        (loss * scale).backward()
        return [m.fc.weight.grad.double() / scale, m.conv1.weight.grad.double() / scale]

    ref = grads(copy.deepcopy(model).double(), x.double(), None, 1.0)
    got = grads(model, x, dtype, 2.0**8 if dtype == torch.float16 else 1.0)
    assert all(bool(torch.isfinite(g).all()) for g in got)
    assert max(_rel(g, r) for g, r in zip(got, ref)) < 5.0


@needs_interpreter
def test_no_channels_give_zero_maps_on_every_backend() -> None:
    """(The channel split divided by zero; under ``backend="auto"`` on CUDA that failure would
    have switched the Triton kernels off for the whole process.)"""
    a, wt = torch.zeros(2, 0, 4, 4), torch.zeros(2, 0)
    for backend in ("torch", "triton"):
        out = cam_epilogue(a, wt, (8, 8), backend=backend)
        assert out.shape == (2, 1, 8, 8) and not out.any()


@needs_interpreter
@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("b,c,h,w", [(2, 40, 7, 7), (3, 64, 14, 14), (1, 24, 5, 3)])
def test_the_grouped_input_gradients_match_the_one_pass_kernel(monkeypatch: pytest.MonkeyPatch, needs: tuple,
                                                               b: int, c: int, h: int, w: int) -> None:
    """``CONFIG["grads"] = "grouped"`` (float16 here: bfloat16 ``tl.dot`` is not modelled by the
    interpreter): ``d acts`` as the one-pass kernel's to one unit in the last place (the product
    ``w·d`` is formed from 16-bit parts, ``wh·dh + wh·dl + wl·dh``, then rounded once), ``d w``
    in float32, several splits and row tiles; float32 activations take the one-pass kernel."""
    from egl.kernels import _cam_triton
    from egl.kernels._cam_triton_backward import input_grads

    monkeypatch.setitem(_cam_triton.CONFIG, "reduce_tile", 512)
    g = torch.Generator().manual_seed(c + h)
    a = torch.randn(b, c, h, w, generator=g).half()
    wt, d = torch.randn(b, c, generator=g), torch.randn(b, h * w, generator=g)
    one = input_grads(a, wt, d, needs, {**_cam_triton.CONFIG, "grads": "triton"})
    grouped = input_grads(a, wt, d, needs, {**_cam_triton.CONFIG, "grads": "grouped"})
    for x, y in zip(grouped, one):
        assert (x is None) == (y is None)
    if needs[0]:
        assert grouped[0].dtype == torch.float16
        torch.testing.assert_close(grouped[0], one[0], rtol=1e-3, atol=1e-7)  # (fp16: 2^-10 apart)
        assert float((grouped[0] == one[0]).float().mean()) > 0.99
    if needs[1]:
        ref = torch.einsum("bchw,bhw->bc", a.double(), d.double().view(b, h, w))
        assert _rel(grouped[1].double(), ref) < 1e-6
    fp32 = a.float()
    torch.testing.assert_close(input_grads(fp32, wt, d, (True, True), {**_cam_triton.CONFIG, "grads": "grouped"})[1],
                               input_grads(fp32, wt, d, (True, True), {**_cam_triton.CONFIG, "grads": "triton"})[1])


@needs_interpreter
def test_the_grouped_input_gradients_serve_the_epilogues_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.kernels import _cam_triton

    a, wt = _inputs(2, 32, 7, 7, seed=21)
    gout = torch.randn(2, 1, 30, 26, generator=torch.Generator().manual_seed(22))
    res = {}
    for mode in ("torch", "grouped"):
        monkeypatch.setitem(_cam_triton.CONFIG, "grads", mode)
        a1, w1 = a.half().requires_grad_(True), wt.clone().requires_grad_(True)
        (cam_epilogue(a1, w1, (30, 26), backend="triton") * gout).sum().backward()
        res[mode] = (a1.grad.float(), w1.grad)
    assert _rel(res["grouped"][0], res["torch"][0]) < 1e-3 and _rel(res["grouped"][1], res["torch"][1]) < 1e-5


def test_float32_activations_under_float16_autocast_are_summed_in_float32() -> None:
    """A ViT's Grad-CAM layer follows a LayerNorm, so its activations are float32 under autocast;
    a channel sum left to autocast ran in float16 and its backward overflowed the loss-scaled
    weight gradient (inf at a scale of 2^8)."""
    import timm

    from egl._amp import inner_scale
    from egl.explainers import grad_cam

    torch.manual_seed(0)
    model = timm.create_model("test_vit", num_classes=5).train()
    size = model.default_cfg["input_size"][-1]
    x, y = torch.rand(4, 3, size, size), torch.tensor([0, 1, 2, 3])
    mask = torch.zeros(4, 1, size, size)
    mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    with inner_scale(2.0**8), torch.autocast("cpu", dtype=torch.float16):
        sal = grad_cam(model, x, y, create_graph=True)
        loss = egl.create("alignment", "bce")(sal, mask)
    (loss * 2.0**8).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


@needs_interpreter
def test_auto_picks_the_kernels_the_h200_runs_chose() -> None:
    """``reduce="auto"`` and ``grads="auto"`` (docs/performance.md, 2026-11-27): the grouped channel
    sum and one-pass backward for 16-bit NCHW activations on CUDA, cuBLAS for float32, PyTorch
    ops or the loop elsewhere."""
    from egl.kernels import _cam_triton
    from egl.kernels._cam_triton_backward import auto_grads, grouped_rows

    assert _cam_triton.CONFIG["reduce"] == "auto" and _cam_triton.CONFIG["grads"] == "auto"
    assert _cam_triton.auto_reduce("cuda", torch.bfloat16) == "grouped"
    assert _cam_triton.auto_reduce("cuda", torch.float16) == "grouped"
    assert _cam_triton.auto_reduce("cuda", torch.float32) == "bmm"
    assert _cam_triton.auto_reduce("cuda", torch.float64) == "dot"
    assert _cam_triton.auto_reduce("cpu", torch.bfloat16) == "loop"
    bf = torch.zeros(2, 512, 7, 7, dtype=torch.bfloat16)
    assert grouped_rows(bf) == 8 and grouped_rows(torch.zeros(2, 1024, 14, 14, dtype=torch.bfloat16)) == 2
    assert grouped_rows(bf.contiguous(memory_format=torch.channels_last)) == 0  # no whole-channel rows
    assert grouped_rows(bf.float()) == 0  # 16-bit only
    assert grouped_rows(torch.zeros(2, 100, 7, 7, dtype=torch.bfloat16)) == 0  # 8 channels do not divide 100
    assert auto_grads(bf) == "torch"  # off CUDA


@needs_interpreter
def test_an_unknown_backward_formulation_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.errors import InputError
    from egl.kernels import _cam_triton

    monkeypatch.setitem(_cam_triton.CONFIG, "grads", "trtion")
    a, wt = _inputs(2, 8, 4, 4, seed=30)
    out = cam_epilogue(a.requires_grad_(True), wt, (8, 8), backend="triton")
    with pytest.raises(InputError, match="grads"):
        out.sum().backward()


@pytest.mark.parametrize("size", [5, (5,), (5, 0), (5.0, 5), (True, 5), "55"])
def test_an_output_size_that_is_not_a_pair_of_positive_ints_is_named(size: object) -> None:
    a, w = _inputs(1, 4, 3, 3)
    with pytest.raises(egl.InputError, match=r"cam_epilogue: 'size' expected an output size \(H, W\): two ints >= 1"):
        cam_epilogue(a, w, size)  # type: ignore[arg-type]


def test_output_sizes_of_numpy_and_tensor_integers_are_taken() -> None:
    import numpy as np

    a, w = _inputs(1, 4, 3, 3)
    want = cam_epilogue(a, w, (8, 8))
    for size in ((np.int64(8), np.int64(8)), (torch.tensor(8), 8), torch.Size([8, 8]), [8, 8]):
        torch.testing.assert_close(cam_epilogue(a, w, size), want)


@needs_interpreter
def test_numpy_and_tensor_sizes_reach_the_triton_launch_as_python_ints() -> None:
    """A NumPy int is no Triton launch argument (and a 0-D tensor reads as a pointer)."""
    import numpy as np

    a, w = _inputs(2, 4, 3, 3)
    want = cam_epilogue(a, w, (8, 8), backend="triton")
    for size in ((np.int64(8), np.int64(8)), (torch.tensor(8), 8)):
        torch.testing.assert_close(cam_epilogue(a, w, size, backend="triton"), want)


#: autograd reference; Triton kernels; their PyTorch ops; the Triton backward after the one-launch forward
_BACKWARDS = ["torch", "triton", "triton-torch-backward", "triton-fused"]


def _epilogue(backward: str, monkeypatch: pytest.MonkeyPatch):
    """``cam_epilogue`` on one of the three backward formulations."""
    if backward == "torch":
        return lambda *a, **k: cam_epilogue(*a, backend="torch", **k)
    if backward == "triton-torch-backward":  # maps the Triton backward would take, on its PyTorch ops
        from egl.kernels import _cam_triton_backward

        monkeypatch.setattr(_cam_triton_backward, "supported", lambda h, w: False)
    if backward == "triton-fused":  # its positions of the extremes feed the backward too
        from egl.kernels import _cam_triton

        monkeypatch.setitem(_cam_triton.CONFIG, "fuse", "on")
    return lambda *a, **k: cam_epilogue(*a, backend="triton", **k)


@needs_interpreter
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("backward", _BACKWARDS)
def test_outputs_holding_an_extreme_pass_no_gradient(backward: str, relu: bool,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Upsampled 2 x 2 -> 32 x 32, the 8 x 8 corner blocks copy their source pixel; the blocks of the
    maximum and minimum are 1 and 0 whatever the activations, so their derivative is zero
    (autograd gave a rounding residue: each pixel's gradient reached its source twice, with
    opposite signs)."""
    run = _epilogue(backward, monkeypatch)
    a = torch.tensor([[3.0, 1.0], [1.5, 0.5]]).repeat(2, 4, 1, 1) * torch.rand(2, 4, 1, 1).add(0.5)
    a.requires_grad_(True)
    wt = torch.full((2, 4), 0.25, requires_grad=True)
    out = run(a, wt, (32, 32), relu=relu)
    # (1 and 0 up to rounding: the last rows and columns copy their source as (1 - λ)·v + λ·v)
    assert (out[:, :, :8, :8] > 1 - 1e-6).all() and (out[:, :, 24:, 24:] < 1e-6).all()
    g = torch.Generator().manual_seed(0)
    held = (out[:, :, :8, :8] * torch.randn(2, 1, 8, 8, generator=g)).sum() \
        + (out[:, :, 24:, 24:] * torch.randn(2, 1, 8, 8, generator=g)).sum()
    ga, gw = torch.autograd.grad(held, (a, wt))
    assert not ga.any() and not gw.any()


@needs_interpreter
@pytest.mark.parametrize("seed", range(1, 5))
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("backward", _BACKWARDS)
def test_bce_gradients_on_2x2_maps_match_float64(backward: str, relu: bool, seed: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """ALIGN's BCE (``1/eps`` steep at a map's 0 and 1) on 2 x 2 maps upsampled to 64 px, where
    16 x 16 blocks copy each corner: float32 gradients were 0.1-4% off float64 (the blocks'
    large gradients cancelling to rounding); now 1e-6 to 1e-5 (benchmarks/alignment_precision.py
    for whole models)."""
    run = _epilogue(backward, monkeypatch)
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 32, 2, 2, generator=g).relu()
    w = torch.randn(4, 32, generator=g) * 0.1
    mask = torch.rand(4, 1, 64, 64, generator=g)
    bce = egl.create("alignment", "bce")

    def grads(dt: torch.dtype, epilogue) -> tuple[torch.Tensor, torch.Tensor]:
        a1, w1 = a.to(dt).clone().requires_grad_(True), w.to(dt).clone().requires_grad_(True)
        sal = epilogue(a1, w1, (64, 64), scale=0.25, relu=relu)
        bce(sal, mask.to(sal.dtype)).backward()
        return a1.grad.double(), w1.grad.double()

    ref = grads(torch.float64, lambda *x, **k: cam_epilogue(*x, backend="torch", **k))
    got = grads(torch.float32, run)
    assert _rel(got[0], ref[0]) < 1e-4 and _rel(got[1], ref[1]) < 1e-4


@needs_interpreter
@pytest.mark.parametrize("case", [(2, 8, 2, 2, 64, 64), (2, 5, 3, 5, 17, 40), (1, 4, 9, 7, 4, 3), (2, 6, 1, 4, 5, 9)])
@pytest.mark.parametrize("backward", ["triton", "triton-torch-backward", "triton-fused"])
def test_the_kernels_hold_nothing_with_a_nonzero_derivative(backward: str, case: tuple,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Against autograd in float64 *without* holding (``minmax_normalize`` without ``src_size``):
    an output held that should not be would be off by the size of its gradient, not by rounding."""
    import torch.nn.functional as F

    from egl.explainers import minmax_normalize

    run = _epilogue(backward, monkeypatch)
    b, c, h, w, hh, ww = case
    a, wt = _inputs(b, c, h, w, seed=3)
    g = torch.rand(b, 1, hh, ww, generator=torch.Generator().manual_seed(4)) * 100
    a1, w1 = a.clone().requires_grad_(True), wt.clone().requires_grad_(True)
    got = torch.autograd.grad((run(a1, w1, (hh, ww), scale=0.5) * g).sum(), [a1, w1])
    a2, w2 = a.double().requires_grad_(True), wt.double().requires_grad_(True)
    raw = (torch.einsum("bc,bchw->bhw", w2, a2).unsqueeze(1) * 0.5).relu()
    ref = minmax_normalize(F.interpolate(raw, size=(hh, ww), mode="bilinear", align_corners=False))
    want = torch.autograd.grad((ref * g.double()).sum(), [a2, w2])
    assert _rel(got[0].double(), want[0]) < 1e-4 and _rel(got[1].double(), want[1]) < 1e-4
