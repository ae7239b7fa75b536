"""Invariants of the sanity check's similarities and of degraded masks (hypothesis)."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egl.data import degrade_mask
from egl.metrics import map_similarity

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def map_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    levels = draw(st.sampled_from([3, 1000]))  # few levels: many ties
    a = draw(hnp.arrays(np.int64, (b, 1, h, w), elements=st.integers(0, levels)))
    c = draw(hnp.arrays(np.int64, (b, 1, h, w), elements=st.integers(0, levels)))
    return torch.from_numpy(a).float(), torch.from_numpy(c).float()


@SETTINGS
@given(map_pairs())
def test_similarities_are_bounded_symmetric_and_rank_only(pair: tuple[torch.Tensor, torch.Tensor]) -> None:
    a, b = pair
    sim = map_similarity(a, b)
    assert all(bool(v.isfinite().all()) for v in sim.values())
    assert bool((sim["spearman"].abs() <= 1).all()) and bool((sim["ssim"] <= 1 + 1e-6).all())
    swapped = map_similarity(b, a)
    assert torch.allclose(sim["spearman"], swapped["spearman"], atol=1e-6)
    # a strictly increasing transform of either map keeps every rank: Spearman unchanged
    assert torch.allclose(map_similarity(torch.exp(a / 100), b)["spearman"], sim["spearman"], atol=1e-6)
    assert torch.allclose(map_similarity(a, a)["spearman"], torch.ones(a.shape[0]))


@SETTINGS
@given(hnp.arrays(np.float32, (1, 9, 11), elements=st.floats(0.0, 1.0, width=32)), st.booleans(),
       st.integers(0, 3), st.integers(0, 3), st.integers(-12, 12), st.integers(-12, 12))
def test_degraded_masks_stay_in_the_unit_range_and_grow_or_shrink(m: np.ndarray, box: bool, dilate: int, erode: int,
                                                                 dy: int, dx: int) -> None:
    mask = torch.from_numpy(m)
    out = degrade_mask(mask, box=box, dilate=dilate, erode=erode, offset=(dy, dx))
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert bool((degrade_mask(mask, dilate=dilate) >= mask).all())
    assert bool((degrade_mask(mask, erode=erode) <= mask).all())
