"""``minmax_normalize``: upsampled outputs holding an extreme pass no gradient back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from egl.explainers import minmax_normalize


def _low() -> torch.Tensor:
    return torch.tensor([[[[0.1, 0.9, 0.3], [0.2, 0.35, 0.7], [0.4, 0.15, 0.05]]]], requires_grad=True)


def test_upsampled_copies_of_an_extreme_pass_no_gradient() -> None:
    """The last 11 rows and columns of 3 -> 64 copy the last source row / column, and the corner
    holds the minimum: the 11 x 11 block is 0 whatever the map (float rounding of the upsampling
    leaves its values a unit in the last place apart)."""
    low = _low()
    up = F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    out = minmax_normalize(up, src_size=(3, 3))
    (g,) = torch.autograd.grad((out[..., 53:, 53:] * torch.randn(11, 11)).sum(), low)
    assert not g.any()
    assert minmax_normalize(up.detach(), src_size=(3, 3)).equal(out.detach())  # values as without src_size
    assert minmax_normalize(up.detach()).equal(out.detach())


def test_outputs_tied_with_an_extreme_pass_no_gradient() -> None:
    """A maximum between two zero pixels (after a ReLU) is tied by the two outputs at equal distance
    on either side: both are 1, neither copies a source pixel (float32: equal values are held)."""
    low = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.8, 0.0]]]]).add(torch.tensor(
        [[[[0.0, 0.0, 0.0], [0.0, 0.0, 0.3], [0.0, 0.0, 0.0]]]])).requires_grad_(True)
    up = F.interpolate(low.relu(), size=(64, 64), mode="bilinear", align_corners=False)
    out = minmax_normalize(up, src_size=(3, 3))
    tied = out.detach() == 1
    assert tied.sum() > 1
    (g,) = torch.autograd.grad((out * tied * torch.randn(64, 64)).sum(), low)
    assert not g.any()


def test_at_its_own_resolution_the_gradient_is_autograds() -> None:
    """Without ``src_size``, or at the source size, nothing is held: autograd's gradient of
    ``(x - min) / (max - min)``, the maximum's own share included."""
    w = torch.randn(1, 1, 3, 3)
    for size in (None, (3, 3)):
        low = _low()
        (g,) = torch.autograd.grad((minmax_normalize(low, src_size=size) * w).sum(), low)
        low2 = _low()
        plain = (low2 - low2.amin()) / (low2.amax() - low2.amin())
        (ref,) = torch.autograd.grad((plain * w).sum(), low2)
        torch.testing.assert_close(g, ref)


@pytest.mark.parametrize("src,out,c", [((2, 2), (64, 64), 1), ((7, 7), (224, 224), 1), ((3, 5), (17, 40), 2),
                                       ((9, 7), (4, 3), 1), ((6, 10), (3, 5), 3), ((1, 4), (5, 9), 1),
                                       ((4, 1), (9, 2), 2), ((3, 3), (1, 1), 1)])
@pytest.mark.parametrize("relu", [True, False])
def test_holding_changes_no_gradient_in_float64(src: tuple, out: tuple, c: int, relu: bool) -> None:
    """What is held is exactly what has zero derivative: in float64 (where the cancellation is
    exact to 1e-16 of the gradients' size) the held gradient equals autograd's own, upsampling,
    downsampling, non-square maps, several channels and 1-pixel axes alike."""
    g = torch.Generator().manual_seed(sum(src) + c)
    low0 = torch.randn(3, c, *src, generator=g, dtype=torch.float64)
    w = torch.rand(3, c, *out, generator=g, dtype=torch.float64) * 1e3  # steep, like BCE near 0 and 1

    def grad(size: tuple | None) -> torch.Tensor:
        low = low0.clone().requires_grad_(True)
        up = F.interpolate(low.relu() if relu else low, size=out, mode="bilinear", align_corners=False)
        (gr,) = torch.autograd.grad((minmax_normalize(up, src_size=size) * w).sum(), low)
        return gr

    held, plain = grad(src), grad(None)
    assert float((held - plain).norm()) <= 1e-12 * float(plain.norm())  # (a 1 x 1 output: both zero)


def test_a_16_bit_map_holds_copies_only() -> None:
    """In bfloat16 an output near the maximum rounds onto it: equal, but not the same function of
    the map, so it keeps its gradient (column 16 of 2 -> 64 interpolates the first two sources)."""
    low = torch.tensor([[[[1.0, 0.99], [0.1, 0.1]]]]).bfloat16().requires_grad_(True)
    up = F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    out = minmax_normalize(up, src_size=(2, 2))
    assert out[0, 0, 0, 16] == 1
    (g,) = torch.autograd.grad(out[0, 0, 0, 16].float(), low, retain_graph=True)
    assert g.any()
    (g,) = torch.autograd.grad(out[0, 0, :16, :16].float().sum(), low)  # the copies of the maximum
    assert not g.any()


def test_a_source_size_that_is_no_size_is_named() -> None:
    import egl

    up = F.interpolate(_low(), size=(8, 8), mode="bilinear", align_corners=False)
    for bad in ("3x3", (3, 0), 3, (3.0, 3)):
        with pytest.raises(egl.InputError, match=r"minmax_normalize: 'src_size' expected an output size \(H, W\)"):
            minmax_normalize(up, src_size=bad)  # type: ignore[arg-type]
