"""Invariants of every registered alignment loss (hypothesis).

Every alignment loss is >= 0, minimal when saliency equals the mask, invariant to
permuting the batch, and computes each sample independently of the others.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import egl
from egl.losses import l1_alignment

# The invariants below are those of saliency-vs-mask losses; losses on the maps of every
# class or on the model itself (inputs "class_maps", "batch") have their own tests.
ALIGNMENT = [n for n in egl.list_components("alignment")
             if getattr(egl.get_component("alignment", n), "inputs", "saliency") == "saliency"]
# BCE squeezes saliency into [eps, 1 - eps] (eps = 1e-6), so with a soft mask the minimum
# sits within eps of the mask: allow that much (and float32 rounding) in "minimal at s = m".
TOL = 1e-4
SETTINGS = settings(max_examples=30, deadline=None)

unit = st.floats(0.0, 1.0, width=32)


@st.composite
def pairs(draw: st.DrawFn, binary: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(saliency, mask), both ``[B, 1, H, W]`` in [0, 1]; binary masks when asked."""
    b, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    shape = (b, 1, h, w)
    if binary is None:
        binary = draw(st.booleans())
    elements = st.sampled_from([0.0, 1.0]) if binary else unit
    s = draw(hnp.arrays(np.float32, shape, elements=unit))
    m = draw(hnp.arrays(np.float32, shape, elements=elements))
    return torch.from_numpy(s), torch.from_numpy(m)


@pytest.mark.parametrize("name", ALIGNMENT)
@SETTINGS
@given(data=pairs())
def test_nonnegative_and_finite(name: str, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, m = data
    out = egl.create("alignment", name, reduction="none")(s, m)
    assert out.shape == (s.shape[0],)
    assert torch.isfinite(out).all()
    assert float(out.min()) >= 0.0


@pytest.mark.parametrize("name", ALIGNMENT)
@SETTINGS
@given(data=pairs())
def test_minimal_when_saliency_equals_mask(name: str, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, m = data
    loss = egl.create("alignment", name, reduction="none")
    at_mask = loss(m, m)
    assert (at_mask <= loss(s, m) + TOL).all()


@pytest.mark.parametrize("name", ALIGNMENT)
@SETTINGS
@given(data=pairs(binary=True))
def test_near_zero_at_perfect_binary_alignment(name: str, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, m = data
    assert float(egl.create("alignment", name)(m, m)) <= TOL


@SETTINGS
@given(data=pairs())
def test_l1_is_symmetric(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    s, m = data
    assert torch.equal(l1_alignment(s, m, reduction="none"), l1_alignment(m, s, reduction="none"))


@pytest.mark.parametrize("name", ALIGNMENT)
@SETTINGS
@given(data=pairs(), seed=st.integers(0, 2**16))
def test_invariant_to_batch_permutation(name: str, data: tuple[torch.Tensor, torch.Tensor], seed: int) -> None:
    s, m = data
    perm = torch.randperm(s.shape[0], generator=torch.Generator().manual_seed(seed))
    mean = egl.create("alignment", name, reduction="mean")
    torch.testing.assert_close(mean(s[perm], m[perm]), mean(s, m))
    none = egl.create("alignment", name, reduction="none")
    torch.testing.assert_close(none(s[perm], m[perm]), none(s, m)[perm])


@pytest.mark.parametrize("name", ALIGNMENT)
@SETTINGS
@given(data=pairs(), row=st.integers(0, 3))
def test_batch_of_one_equals_row_of_batch(name: str, data: tuple[torch.Tensor, torch.Tensor], row: int) -> None:
    s, m = data
    i = row % s.shape[0]
    loss = egl.create("alignment", name, reduction="none")
    torch.testing.assert_close(loss(s[i : i + 1], m[i : i + 1]), loss(s, m)[i : i + 1])


@pytest.mark.parametrize("name", ALIGNMENT)
@SETTINGS
@given(data=pairs(), factor=st.integers(2, 3))
def test_mask_at_higher_resolution_is_accepted(name: str, data: tuple[torch.Tensor, torch.Tensor],
                                               factor: int) -> None:
    s, m = data
    big = m.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    loss = egl.create("alignment", name, reduction="none")
    # area-averaging a nearest-upsampled mask gives the mask back
    torch.testing.assert_close(loss(s, big), loss(s, m))
