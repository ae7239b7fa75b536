"""``minmax_normalize``: outputs holding an extreme pass no gradient back."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from egl.explainers import minmax_normalize


def test_every_output_equal_to_an_extreme_passes_no_gradient() -> None:
    """Ties included: two pixels hold the maximum, two the minimum; both are 1 (0) whatever the
    input, so a loss on them has zero derivative (autograd's ``amax`` split the gradient between
    ties and sent each pixel's own share back with the opposite sign: zero only up to rounding)."""
    x = torch.tensor([[[[0.3, 2.0, 2.0], [-1.0, 0.7, -1.0]]]], requires_grad=True)
    out = minmax_normalize(x)
    held = out[0, 0, 0, 1] * 3.7 + out[0, 0, 0, 2] * 1.3 + out[0, 0, 1, 0] * 5.0 - out[0, 0, 1, 2]
    (g,) = torch.autograd.grad(held, x)
    assert not g.any()
    (g,) = torch.autograd.grad(minmax_normalize(x)[0, 0, 0, 0], x)  # an inner pixel: (x - lo) / (hi - lo)
    torch.testing.assert_close(g[0, 0, 0, 0], torch.tensor(1 / 3.0))
    torch.testing.assert_close(minmax_normalize(x.detach()), out.detach())  # the values are the same


def test_upsampled_copies_of_an_extreme_pass_no_gradient() -> None:
    """With ``src_size``: outputs that copy the extreme's source pixel also pass none, though float
    rounding of the upsampling leaves them a unit in the last place from it."""
    low = torch.tensor([[[[0.1, 0.9, 0.3], [0.2, 0.35, 0.7], [0.4, 0.15, 0.05]]]], requires_grad=True)
    up = F.interpolate(low, size=(64, 64), mode="bilinear", align_corners=False)
    out = minmax_normalize(up, src_size=(3, 3))
    # the last 11 rows and columns copy the last source row / column; its corner holds the minimum
    (g,) = torch.autograd.grad((out[..., 53:, 53:] * torch.randn(11, 11)).sum(), low)
    assert not g.any()
    assert minmax_normalize(up.detach(), src_size=(3, 3)).equal(out.detach())
