"""egl._sampling.sample_beta: Beta(α, α) draws without the distribution's device read."""

from __future__ import annotations

import torch

from egl._sampling import sample_beta


def test_same_draws_as_torch_beta_under_a_seed() -> None:
    torch.manual_seed(3)
    got = sample_beta(0.2, 64, "cpu")
    torch.manual_seed(3)
    a = torch.tensor(0.2)
    want = torch.distributions.Beta(a, a).sample((64,))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got.shape == (64,) and bool(((got >= 0) & (got <= 1)).all())


def test_mean_and_spread_of_many_draws() -> None:
    torch.manual_seed(0)
    draws = sample_beta(2.0, 20000, "cpu")
    # Beta(2, 2): mean 1/2, variance 1/20
    assert abs(float(draws.mean()) - 0.5) < 0.01
    assert abs(float(draws.var()) - 0.05) < 0.003
