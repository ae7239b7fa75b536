"""Invariants of the regularizers (hypothesis): smoothness, sparsity, mixup consistency."""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from egl.regularizers import mixup_consistency, same_class_pairs, smoothness, sparsity

SETTINGS = settings(max_examples=30, deadline=None)
unit = st.floats(0.0, 1.0, width=32)


@st.composite
def masks(draw: st.DrawFn, channels: int | None = None) -> torch.Tensor:
    c = channels if channels is not None else draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 4)), c, draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    return torch.from_numpy(draw(hnp.arrays(np.float32, shape, elements=unit)))


@SETTINGS
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 3), st.integers(1, 8), st.integers(1, 8)), value=unit)
def test_smoothness_zero_for_constant_masks(shape: tuple[int, int, int, int], value: float) -> None:
    m = torch.full(shape, value)
    assert torch.equal(smoothness(m, reduction="none"), torch.zeros(shape[0]))


@SETTINGS
@given(m=masks())
def test_smoothness_unchanged_by_flips(m: torch.Tensor) -> None:
    ref = smoothness(m, reduction="none")
    assert float(ref.min()) >= 0.0
    for dims in ((-1,), (-2,), (-1, -2)):
        torch.testing.assert_close(smoothness(m.flip(dims), reduction="none"), ref)
    torch.testing.assert_close(smoothness(m.transpose(-1, -2), reduction="none"), ref)  # square or not


@SETTINGS
@given(m2=masks(), scale=unit)
def test_sparsity_monotone_in_the_mask(m2: torch.Tensor, scale: float) -> None:
    g = torch.Generator().manual_seed(int(scale * 1e6))
    m1 = m2 * torch.rand(m2.shape, generator=g) * scale  # m1 <= m2 elementwise
    assert (m1 <= m2).all()
    assert (sparsity(m1, reduction="none") <= sparsity(m2, reduction="none")).all()
    assert float(sparsity(m1)) <= float(sparsity(m2))


@SETTINGS
@given(target=st.lists(st.integers(0, 4), min_size=1, max_size=16), seed=st.integers(0, 2**16))
def test_same_class_pairs_is_a_class_preserving_permutation(target: list[int], seed: int) -> None:
    t = torch.tensor(target)
    p = same_class_pairs(t, generator=torch.Generator().manual_seed(seed))
    assert sorted(p.tolist()) == list(range(len(target)))
    assert torch.equal(t[p], t)
    counts = torch.bincount(t)
    alone = counts[t] == 1
    idx = torch.arange(len(target))
    assert torch.equal(p == idx, alone)


@SETTINGS
@given(target=st.lists(st.integers(0, 3), min_size=1, max_size=8), seed=st.integers(0, 2**16),
       data=st.data())
def test_mixup_consistency_zero_when_beta_is_zero_or_one(target: list[int], seed: int, data: st.DataObject) -> None:
    b = len(target)
    t = torch.tensor(target)
    g = torch.Generator().manual_seed(seed)
    partner = same_class_pairs(t, generator=g)
    sal = torch.rand(b, 1, 4, 5, generator=g)
    logits = torch.randn(b, 4, generator=g)
    beta = torch.tensor(data.draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=b, max_size=b)))
    mixed = torch.where(beta.view(-1, 1, 1, 1) == 1.0, sal, sal[partner])
    terms = mixup_consistency(sal, mixed, logits, t, beta, partner, reduction="none")
    assert torch.equal(terms.consistency, torch.zeros(b))
    torch.testing.assert_close(terms.total, terms.ce + terms.sparsity)
