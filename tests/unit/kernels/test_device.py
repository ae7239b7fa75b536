"""egl.kernels._device.device_of: Triton launches run on the tensor's own CUDA device."""

from __future__ import annotations

import contextlib

import pytest
import torch

from egl.kernels._device import device_of


def test_a_cpu_tensor_changes_nothing() -> None:
    assert isinstance(device_of(torch.zeros(1)), contextlib.nullcontext)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_tensor_on_the_second_device_makes_it_current() -> None:
    x = torch.zeros(1, device="cuda:1")
    with torch.cuda.device(0), device_of(x):
        assert torch.cuda.current_device() == 1
