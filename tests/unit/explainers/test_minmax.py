"""``minmax_normalize``: upsampled outputs holding an extreme pass no gradient back."""

from __future__ import annotations

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
    on either side: both are 1, neither copies a source pixel."""
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
