"""Random draws shared by the mixup-style recipes and regularizers."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample_beta"]


def sample_beta(alpha: float, n: int, device: torch.device | str) -> Tensor:
    """``n`` draws of Beta(α, α) on ``device`` from torch's global RNG (so seeds apply).

    ``alpha`` must already be checked (> 0): the distribution's own argument validation is off,
    since it reads the parameter back from the device (a host sync per draw on a GPU).
    """
    a = torch.full((), float(alpha), device=device)  # torch.tensor(alpha, device=...) syncs a GPU stream
    return torch.distributions.Beta(a, a, validate_args=False).sample((n,))
