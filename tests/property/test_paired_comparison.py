"""Invariants of the paired comparison (hypothesis): the sign-flip p-value ignores the sign, the scale
and the order of the differences and never falls below what n pairs allow; the baseline swap
negates the difference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egl.experiments.compare import paired_comparison, sign_flip_p

SETTINGS = settings(max_examples=40, deadline=None)
DIFFS = st.lists(st.floats(-1.0, 1.0, allow_nan=False, allow_subnormal=False, width=32), min_size=1,
                 max_size=9).map(np.array)


@SETTINGS
@given(DIFFS, st.floats(0.01, 100.0), st.randoms(use_true_random=False))
def test_sign_flip_p_ignores_sign_scale_and_order(d: np.ndarray, scale: float, rng) -> None:
    p = sign_flip_p(d)
    order = list(range(len(d)))
    rng.shuffle(order)
    assert sign_flip_p(-d) == pytest.approx(p)
    assert sign_flip_p(scale * d) == pytest.approx(p)
    assert sign_flip_p(d[order]) == pytest.approx(p)
    assert 2.0 ** (1 - len(d)) - 1e-12 <= p <= 1.0  # all-+ and all-- are always as far as the observed


@SETTINGS
@given(st.lists(st.tuples(st.floats(0.0, 1.0, width=32), st.floats(0.0, 1.0, width=32)), min_size=2, max_size=8))
def test_swapping_method_and_baseline_negates_the_difference(pairs: list[tuple[float, float]]) -> None:
    rows = [{"method": m, "train": "all", "seed": s, "split": "o", "in_distribution": False, "acc": v}
            for s, (a, b) in enumerate(pairs) for m, v in (("erm", a), ("align", b))]
    (one,) = paired_comparison(rows, baseline="erm")
    (other,) = paired_comparison(rows, baseline="align")
    assert one.mean == pytest.approx(-other.mean, abs=1e-12)
    assert one.p_sign_flip == pytest.approx(other.p_sign_flip)
    if not np.isnan(one.p_t):
        assert one.p_t == pytest.approx(other.p_t)
        assert one.ci_low == pytest.approx(-other.ci_high, abs=1e-12)
