"""Invariants of every registered masker (hypothesis): masks in [0, 1] at the input's resolution."""

from __future__ import annotations

import functools

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import egl

# SAM declares its input space (images in [0, 1], or normalised with a given mean/std) and rejects
# images far outside it; these properties draw images of any scale, so SAM's range properties are
# tested in tests/unit/maskers/test_sam.py instead.
MASKERS = [n for n in egl.list_components("masker") if n != "sam"]
SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def batches(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with arbitrary scale (normalised or not) and a soft mask at some resolution."""
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(2, 8)), draw(st.integers(2, 8))
    scale = draw(st.sampled_from([1.0, 10.0, 1000.0]))
    x = draw(hnp.arrays(np.float32, (b, 3, h, w), elements=st.floats(-1.0, 1.0, width=32)))
    mh, mw = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    m = draw(hnp.arrays(np.float32, (b, 1, mh, mw), elements=st.floats(0.0, 1.0, width=32)))
    return torch.from_numpy(x) * scale, torch.from_numpy(m)


@functools.lru_cache(maxsize=None)
def _masker(name: str) -> torch.nn.Module:
    """One instance per name for all examples (callers set train/eval mode)."""
    torch.manual_seed(0)
    return egl.create("masker", name)


@pytest.mark.parametrize("name", MASKERS)
@SETTINGS
@given(data=batches())
def test_masks_lie_in_unit_interval(name: str, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, mask = data
    masker = _masker(name).train()
    with torch.no_grad():
        out = masker(x, mask)
    assert out.shape == (x.shape[0], 1, *x.shape[-2:])
    assert torch.isfinite(out).all()
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


@pytest.mark.parametrize("name", MASKERS)
@SETTINGS
@given(data=batches(), row=st.integers(0, 2))
def test_batch_of_one_equals_row_of_batch_in_eval_mode(name: str, data: tuple[torch.Tensor, torch.Tensor],
                                                       row: int) -> None:
    x, mask = data
    i = row % x.shape[0]
    masker = _masker(name).eval()
    with torch.no_grad():
        torch.testing.assert_close(masker(x[i : i + 1], mask[i : i + 1]), masker(x, mask)[i : i + 1],
                                   atol=1e-5, rtol=1e-4)
