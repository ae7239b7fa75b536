"""Invariants of the sanity check's similarities, map_similarity (hypothesis)."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egl.metrics import map_similarity

SETTINGS = settings(max_examples=25, deadline=None)


@st.composite
def map_pairs(draw: st.DrawFn) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, w = draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 12))
    levels = draw(st.sampled_from([3, 1000]))  # few levels: many ties
    low = -levels if draw(st.booleans()) else 0  # signed maps too
    a = draw(hnp.arrays(np.int64, (b, 1, h, w), elements=st.integers(low, levels)))
    c = draw(hnp.arrays(np.int64, (b, 1, h, w), elements=st.integers(low, levels)))
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
    assert torch.allclose(sim["ssim"], swapped["ssim"], atol=1e-6)
    if bool((a >= 0).all()) and bool((b >= 0).all()):
        assert torch.equal(sim["spearman_abs"], sim["spearman"])  # non-negative maps: the same ranks
    assert torch.allclose(map_similarity(a.abs(), b.abs())["spearman"], sim["spearman_abs"])
    # per image: a batch of one gives its row, and a permuted batch permutes the rows
    one = map_similarity(a[-1:], b[-1:])
    assert all(torch.allclose(one[k], sim[k][-1:], atol=1e-6) for k in sim)
    flip = map_similarity(a.flip(0), b.flip(0))
    assert all(torch.allclose(flip[k], sim[k].flip(0), atol=1e-6) for k in sim)
