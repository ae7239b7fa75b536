"""Host-side bilinear helpers: interpolation matrices, the rows/columns where extremes lie, and copy classes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from egl.kernels._bilinear import copy_classes, extreme_candidates, interp_matrix, pinned

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


def _exact_rows(n_src: int, n_out: int) -> list[tuple]:
    """Each output index's interpolation weights as exact fractions: ``{source: weight}``."""
    from fractions import Fraction

    rows = []
    for o in range(n_out):
        s = max(Fraction(2 * o + 1, 2) * Fraction(n_src, n_out) - Fraction(1, 2), Fraction(0))
        i0 = min(int(s), n_src - 1)
        i1 = min(i0 + 1, n_src - 1)
        lam = s - i0
        weights: dict[int, Fraction] = {}
        for i, wt in ((i0, 1 - lam), (i1, lam)):
            weights[i] = weights.get(i, Fraction(0)) + wt
        rows.append(tuple(sorted((i, wt) for i, wt in weights.items() if wt != 0)))
    return rows


@pytest.mark.parametrize("n_src,n_out", SIZES + [(3, 9), (5, 15), (2, 3)])
def test_copy_classes_label_together_exactly_the_outputs_with_equal_weights(n_src: int, n_out: int) -> None:
    """Decided in integers: equal labels exactly where the exact interpolation weights are equal,
    and a label below ``n_src`` exactly where an output copies that source."""
    labels = copy_classes(n_src, n_out).tolist()
    rows = _exact_rows(n_src, n_out)
    for o in range(n_out):
        copies = len(rows[o]) == 1
        assert (labels[o] < n_src) == copies and (not copies or labels[o] == rows[o][0][0])
        for q in range(n_out):
            assert (labels[o] == labels[q]) == (rows[o] == rows[q])
    assert copy_classes(2, 64).tolist()[:17] == [0] * 16 + [18]  # 16 x 16 blocks copy each corner


def test_pinned_marks_the_outputs_that_copy_the_same_source_pixel() -> None:
    at = torch.tensor([0, 2 * 64 * 64 - 1, 64 * 64 + 5 * 64 + 40])  # corners of two channels; row copy x interior
    held = pinned(at, (2, 64, 64), (2, 2)).view(3, 2, 64, 64)
    assert held[0, 0, :16, :16].all() and held[0].sum() == 256
    assert held[1, 1, 48:, 48:].all() and held[1].sum() == 256
    assert held[2, 1, :16, 40].all() and held[2].sum() == 16  # column 40 interpolates: a strip of rows
