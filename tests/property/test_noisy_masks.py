"""Invariants of degraded masks (hypothesis): values stay in [0, 1]; dilation grows, erosion shrinks."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egl.data import degrade_mask

SETTINGS = settings(max_examples=25, deadline=None)


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
