"""Host-side bilinear helpers: interpolation matrices and the rows/columns where extremes lie."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from egl.kernels._bilinear import extreme_candidates, interp_matrix

SIZES = [(1, 8), (2, 64), (3, 17), (7, 224), (14, 224), (28, 224), (5, 5), (40, 20), (6, 10), (4, 9)]


@pytest.mark.parametrize("n_src,n_out", SIZES)
def test_interp_matrix_is_pytorch_upsampling(n_src: int, n_out: int) -> None:
    x = torch.randn(3, 1, n_src, 4)
    ref = F.interpolate(x, size=(n_out, 4), mode="bilinear", align_corners=False)
    u = interp_matrix(n_src, n_out, torch.device("cpu"))
    torch.testing.assert_close(torch.einsum("Oh,bchw->bcOw", u, x), ref)
    torch.testing.assert_close(u.sum(1), torch.ones(n_out))


@pytest.mark.parametrize("hy,hx", [((7, 224), (7, 224)), ((3, 17), (5, 29)), ((28, 224), (14, 100)),
                                   ((1, 8), (2, 8)), ((40, 20), (6, 10))])
def test_extremes_of_an_upsampled_map_lie_on_the_candidate_grid(hy: tuple, hx: tuple) -> None:
    g = torch.Generator().manual_seed(0)
    cy, cx = extreme_candidates(*hy).long(), extreme_candidates(*hx).long()
    assert len(cy) <= hy[1] and cy.unique().numel() == len(cy)
    for _ in range(20):
        low = torch.randn(4, 1, hy[0], hx[0], generator=g).relu()
        up = F.interpolate(low, size=(hy[1], hx[1]), mode="bilinear", align_corners=False)
        grid = up[:, :, cy][:, :, :, cx]
        # equal up to rounding: a missed candidate would be off by a fraction of the map's range
        torch.testing.assert_close(grid.amax((1, 2, 3)), up.amax((1, 2, 3)), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grid.amin((1, 2, 3)), up.amin((1, 2, 3)), rtol=1e-6, atol=1e-7)


def test_candidates_are_few_when_upsampling() -> None:
    assert len(extreme_candidates(7, 224)) <= 4 * 7 + 2
    assert extreme_candidates(7, 224).dtype == torch.int32
