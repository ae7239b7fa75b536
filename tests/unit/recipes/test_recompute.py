"""egl.recipes._recompute: activations recomputed in the backward, module buffers restored."""

from __future__ import annotations

import torch

from egl.recipes._recompute import recompute


def test_recompute_restores_buffers_after_the_second_forward() -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4)).train()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = recompute(net, x)
    after_forward = [b.clone() for b in net.buffers()]
    out.sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(after_forward, net.buffers()))
    assert int(net[1].num_batches_tracked) == 1 and x.grad is not None
