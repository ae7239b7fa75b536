"""ROAD's noisy linear imputation: against its linear system written out densely, the
neighbour equations, the noise, the edge cases, and the metrics that use it as a baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import egl
from egl.metrics import deletion, faithfulness, insertion, noisy_linear_imputation
from egl.metrics import imputation
from egl.metrics.imputation import NEIGHBOUR_WEIGHTS

KERNEL = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64)


def _dense_road(img: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """ROAD's system built pixel by pixel (dense, float64): for each removed pixel,
    Σ_in-image-neighbours w · (value) = (Σ w) · pixel, kept neighbours' values known."""
    c, h, w = img.shape
    removed = [(y, x) for y in range(h) for x in range(w) if not keep[y, x]]
    at = {p: i for i, p in enumerate(removed)}
    a = torch.zeros(len(removed), len(removed), dtype=torch.float64)
    b = torch.zeros(len(removed), c, dtype=torch.float64)
    for i, (y, x) in enumerate(removed):
        for (dy, dx), wt in NEIGHBOUR_WEIGHTS:
            ny, nx = y + dy, x + dx
            if not (0 <= ny < h and 0 <= nx < w):
                continue
            a[i, i] += wt
            if (ny, nx) in at:
                a[i, at[(ny, nx)]] -= wt
            else:
                b[i] += wt * img[:, ny, nx].double()
    z = torch.linalg.solve(a, b)
    out = img.double().clone()
    for i, (y, x) in enumerate(removed):
        out[:, y, x] = z[i]
    return out


def test_weights_are_roads() -> None:
    assert sum(w for _, w in NEIGHBOUR_WEIGHTS) == pytest.approx(1.0)
    assert sorted(o for o, _ in NEIGHBOUR_WEIGHTS) == [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 1, 4), (3, 2, 6, 6)])
def test_matches_the_dense_system_and_keeps_kept_pixels(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    keep = torch.rand(shape[0], shape[2], shape[3], generator=g) > 0.5
    keep[:, 0, 0] = True  # at least one kept pixel per image
    got = noisy_linear_imputation(x, keep, noise=0.0)
    assert got.dtype == x.dtype and got.shape == x.shape
    for i in range(shape[0]):
        assert torch.allclose(got[i], _dense_road(x[i], keep[i]), atol=1e-10)
    assert torch.equal(got.permute(0, 2, 3, 1)[keep], x.permute(0, 2, 3, 1)[keep])


def test_every_filled_pixel_is_the_weighted_mean_of_its_neighbours() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 24, generator=g, dtype=torch.float64)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(24), indexing="ij")
    keep = ((yy - 16) ** 2 + (xx - 12) ** 2 > 64).expand(2, 32, 24).clone()  # a disc removed
    keep[1, :, :4] = False  # and a strip along the border
    out = noisy_linear_imputation(x, keep[:, None], noise=0.0)
    flat = out.reshape(6, 1, 32, 24)
    mean = F.conv2d(flat, KERNEL.view(1, 1, 3, 3), padding=1) / F.conv2d(torch.ones_like(flat[:1]),
                                                                          KERNEL.view(1, 1, 3, 3), padding=1)
    removed = (~keep)[:, None].expand(2, 3, 32, 24).reshape(6, 1, 32, 24)
    assert (mean - flat)[removed].abs().max() < 1e-10


def test_a_smooth_image_is_filled_back() -> None:
    """A constant image comes back exactly; a linear ramp nearly (the 8-neighbour mean of a plane is the plane)."""
    x = torch.full((1, 3, 16, 16), 0.7, dtype=torch.float64)
    keep = torch.ones(1, 16, 16, dtype=torch.bool)
    keep[0, 3:12, 4:13] = False
    assert torch.allclose(noisy_linear_imputation(x, keep, noise=0.0), x, atol=1e-12)
    ramp = torch.linspace(0, 1, 16, dtype=torch.float64).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    assert torch.allclose(noisy_linear_imputation(ramp, keep, noise=0.0), ramp, atol=1e-10)


def test_noise_lands_on_filled_pixels_only_and_repeats_with_the_generator() -> None:
    x = torch.zeros(4, 3, 32, 32)
    keep = torch.zeros(4, 32, 32, dtype=torch.bool)
    keep[:, :, :8] = True
    one = noisy_linear_imputation(x, keep, generator=torch.Generator().manual_seed(5))
    two = noisy_linear_imputation(x, keep, generator=torch.Generator().manual_seed(5))
    assert torch.equal(one, two)
    assert torch.equal(one.permute(0, 2, 3, 1)[keep], torch.zeros(int(keep.sum()), 3))
    filled = one.permute(0, 2, 3, 1)[~keep]
    assert abs(float(filled.std()) - 0.01) < 0.001 and abs(float(filled.mean())) < 0.001
    other = noisy_linear_imputation(x, keep, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(one, other)


def test_nothing_or_everything_removed() -> None:
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(noisy_linear_imputation(x, torch.ones(2, 5, 5, dtype=torch.bool)), x)
    none_kept = noisy_linear_imputation(x, torch.zeros(2, 5, 5, dtype=torch.bool), noise=0.0)
    assert torch.equal(none_kept, torch.zeros_like(x))  # nothing to interpolate from: zeros
    empty = torch.zeros(0, 3, 5, 5)
    assert noisy_linear_imputation(empty, torch.zeros(0, 5, 5, dtype=torch.bool)).shape == empty.shape


def test_half_precision_keeps_its_dtype() -> None:
    x = torch.randn(1, 3, 8, 8).half()
    keep = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) > 0.3
    out = noisy_linear_imputation(x, keep, noise=0.0)
    assert out.dtype == torch.float16
    assert torch.allclose(out.double(), _dense_road(x[0].double(), keep[0])[None], atol=2e-3)


def test_bad_arguments_are_named() -> None:
    x = torch.randn(2, 3, 5, 5)
    with pytest.raises(egl.InputError, match=r"'keep' expected a bool tensor of shape \[2, 1, 5, 5\]"):
        noisy_linear_imputation(x, torch.ones(2, 5, 5))
    with pytest.raises(egl.InputError, match=r"'keep' expected"):
        noisy_linear_imputation(x, torch.ones(2, 4, 5, dtype=torch.bool))
    with pytest.raises(egl.InputError, match=r"'noise' expected"):
        noisy_linear_imputation(x, torch.ones(2, 5, 5, dtype=torch.bool), noise=-0.1)
    with pytest.raises(egl.InputError, match=r"'generator' expected a CPU torch.Generator"):
        noisy_linear_imputation(x, torch.ones(2, 5, 5, dtype=torch.bool), generator=0)
    with pytest.raises(egl.InputError, match=r"'x' expected"):
        noisy_linear_imputation(torch.randn(3, 5, 5), torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(egl.InputError, match=r"non-finite|NaN"):
        noisy_linear_imputation(torch.full((1, 1, 3, 3), float("nan")), torch.ones(1, 3, 3, dtype=torch.bool))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()


def test_faithfulness_with_the_imputation_is_the_hand_loop() -> None:
    model = _model()
    g = torch.Generator().manual_seed(2)
    x, s = torch.randn(3, 3, 8, 8, generator=g), torch.rand(3, 1, 8, 8, generator=g)
    ks = (10, 50)
    got = faithfulness(model, x, s, ks=ks, baseline="noisy_linear", batch_size=4)
    other = faithfulness(model, x, s, ks=ks, baseline="noisy_linear", batch_size=100)  # chunking changes nothing
    assert torch.allclose(got.comprehensiveness_per_image, other.comprehensiveness_per_image, atol=1e-6)
    field = 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))  # one field per image, seed 0
    with torch.no_grad():
        p = model(x).softmax(1)
        y = p.argmax(1)
        order = s.flatten(1).argsort(dim=1, descending=True, stable=True)
        for j, k in enumerate(ks):
            n = int(k * 64 / 100 + 0.5)
            top = torch.zeros(3, 64, dtype=torch.bool).scatter_(1, order[:, :n], True).view(3, 8, 8)
            for keep, result in ((~top, got.comprehensiveness_per_image), (top, got.sufficiency_per_image)):
                filled = noisy_linear_imputation(x, keep, noise=0.0) + field * (~keep)[:, None]
                want = p.gather(1, y[:, None])[:, 0] - model(filled).softmax(1).gather(1, y[:, None])[:, 0]
                assert torch.allclose(result[:, j], want, atol=1e-6)


def test_the_imputation_hides_a_removed_region_that_zeros_show() -> None:
    """A model that reads only the middle of a constant image: zeroing the middle changes its
    output, the linear imputation gives the image back."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2)).eval()
    x = torch.full((2, 3, 8, 8), 0.5)
    s = torch.zeros(2, 1, 8, 8)
    s[:, :, 2:6, 2:6] = 1.0
    zero = faithfulness(model, x, s, ks=(25,), baseline="zero")
    linear = faithfulness(model, x, s, ks=(25,), baseline="linear")
    assert float(zero.comprehensiveness_per_image.abs().max()) > 1e-3
    assert float(linear.comprehensiveness_per_image.abs().max()) < 1e-6
    curve = deletion(model, x, s, steps=4, baseline="linear")
    assert torch.allclose(curve.curve[:, :4], curve.curve[:, :1].expand(2, 4), atol=1e-6)  # until all is removed
    start = insertion(model, x, s, steps=4, baseline="linear").curve[:, 0]  # everything removed: zeros
    assert torch.allclose(start, model(torch.zeros_like(x)).softmax(1).gather(1, curve.target[:, None])[:, 0])


def test_images_solved_side_by_side_equal_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 2, 12, 10, generator=g, dtype=torch.float64)
    keep = torch.rand(3, 12, 10, generator=g) > 0.4
    threads = torch.get_num_threads()
    monkeypatch.setattr(imputation, "PARALLEL_PIXELS", 1)  # (the small images here would stay on one thread)
    try:
        torch.set_num_threads(1)
        alone = noisy_linear_imputation(x, keep, noise=0.0)
        torch.set_num_threads(3)
        together = noisy_linear_imputation(x, keep, noise=0.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, together)
