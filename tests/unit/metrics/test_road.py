"""ROAD's MoRF / LeRF / combined scores: against a hand loop of the imputation, and their checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import egl
from egl.metrics import ROAD_PERCENTILES, noisy_linear_imputation, road


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 10 * 10, 5)).eval()


def test_drops_are_the_hand_loop_of_roads_definition() -> None:
    model = _model()
    g = torch.Generator().manual_seed(1)
    x, s = torch.randn(3, 3, 10, 10, generator=g), torch.rand(3, 1, 10, 10, generator=g)
    qs = (20, 50, 70)
    r = road(model, x, s, percentiles=qs, baseline="linear", batch_size=5)
    with torch.no_grad():
        p = model(x).softmax(1)
        y = p.argmax(1)
        p0 = p.gather(1, y[:, None])[:, 0]
        order = s.flatten(1).argsort(dim=1, descending=True, stable=True)
        for j, q in enumerate(qs):
            n = int(q * 100 / 100 + 0.5)
            top = torch.zeros(3, 100, dtype=torch.bool).scatter_(1, order[:, :n], True).view(3, 10, 10)
            bottom = torch.zeros(3, 100, dtype=torch.bool).scatter_(1, order[:, 100 - n:], True).view(3, 10, 10)
            for removed, got in ((top, r.morf_per_image[:, j]), (bottom, r.lerf_per_image[:, j])):
                after = model(noisy_linear_imputation(x, ~removed, noise=0.0)).softmax(1).gather(1, y[:, None])[:, 0]
                assert torch.allclose(got, p0 - after, atol=1e-6)
    assert torch.allclose(r.combined, ((r.morf_per_image - r.lerf_per_image) / 2).mean())
    assert torch.allclose(r.morf, r.morf_per_image.mean()) and torch.equal(r.target, y)
    d = r.as_dict()
    assert set(d) == {"road", "morf", "lerf", "morf@20", "morf@50", "morf@70", "lerf@20", "lerf@50", "lerf@70"}


def test_a_map_that_points_at_what_the_model_reads_scores_higher() -> None:
    """The model reads the left half only: a map on the left half beats one on the right."""
    w = torch.zeros(2, 3, 10, 10)
    w[0, :, :, :5] = torch.randn(3, 10, 5, generator=torch.Generator().manual_seed(0))
    model = nn.Sequential(nn.Flatten(), nn.Linear(300, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.copy_(w.flatten(1))
    x = torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    left = torch.zeros(4, 1, 10, 10)
    left[..., :5] = 1.0 + torch.rand(4, 1, 10, 5, generator=torch.Generator().manual_seed(2))
    right = left.flip(-1)
    good = road(model, x, left, percentiles=(20, 40), target=torch.zeros(4, dtype=torch.long))
    bad = road(model, x, right, percentiles=(20, 40), target=torch.zeros(4, dtype=torch.long))
    assert float(bad.morf_per_image.abs().max()) < 0.05  # removing what the model ignores changes little
    assert float(good.combined) > float(bad.combined)


def test_defaults_and_bad_arguments() -> None:
    assert ROAD_PERCENTILES == (10, 20, 30, 40, 50, 60, 70, 80, 90)
    model, x, s = _model(), torch.randn(1, 3, 10, 10), torch.rand(1, 1, 10, 10)
    assert road(model, x, s).morf_per_image.shape == (1, 9)
    for bad in ((), (0, 50), (50, 100), (10, 10), "10", (True,)):
        with pytest.raises(egl.InputError, match=r"egl.metrics.road: 'percentiles' expected"):
            road(model, x, s, percentiles=bad)
    with pytest.raises(egl.InputError, match=r"'baseline' expected 'noisy_linear' \(ROAD's\) or 'linear'"):
        road(model, x, s, baseline="zero")
