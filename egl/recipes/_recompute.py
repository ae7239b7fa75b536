"""Activation recomputation for a module whose forward runs in training mode.

``torch.utils.checkpoint`` runs the forward a second time during the backward. For a module
with BatchNorm in training mode that second pass would update the running statistics (and
``num_batches_tracked``) again; :func:`recompute` restores every buffer after it, so the
module's state after a step is exactly what it is without recomputation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

__all__ = ["recompute"]


def recompute(module: nn.Module, *args: Any) -> Tensor:
    """``module(*args)``, keeping no activations for the backward: they are recomputed there."""
    calls = [0]

    def run(*a: Any) -> Tensor:
        calls[0] += 1
        if calls[0] == 1:
            return module(*a)
        saved = [b.detach().clone() for b in module.buffers()]
        try:
            return module(*a)
        finally:
            with torch.no_grad():
                for b, s in zip(module.buffers(), saved):
                    b.copy_(s)

    return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=True)
