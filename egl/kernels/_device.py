"""The device a Triton launch runs on."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import Tensor

__all__ = ["device_of"]


def device_of(t: Tensor) -> ContextManager[object]:
    """``torch.cuda.device(t.device)`` for a CUDA tensor (Triton launches on the *current* CUDA
    device: a map on ``cuda:1`` while ``cuda:0`` is current would be read from the wrong card),
    nothing otherwise (the interpreter on the CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
