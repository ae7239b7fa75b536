"""Host-to-device copies that do not wait for the device.

A blocking host-to-device copy (``torch.tensor(data, device="cuda")``, ``t.to("cuda")``) makes
PyTorch synchronise the stream after the copy: the host waits for every kernel queued before it,
then the device idles while the host queues the next ones. A non-blocking CUDA copy from
pageable host memory gets no such synchronisation from PyTorch: the driver stages the data
before the call returns (CUDA's documentation allows it to wait for the stream while staging, as
it may for a large copy), so the source may be freed at once, and the copy stays ordered on the
stream.

Only CUDA (and ROCm, which presents as ``cuda``) is trusted with this: a non-blocking copy to
Apple's ``mps`` from a pageable tensor that is freed right away can deliver wrong values
(pytorch/pytorch#139550), so other devices keep the blocking copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["upload", "host_tensor", "STAGED_DEVICE_TYPES"]

#: Device types whose non-blocking copy from pageable host memory is staged before it returns.
STAGED_DEVICE_TYPES = frozenset({"cuda"})


def upload(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None, *,
           pinned_async: bool = False) -> Tensor:
    """``t`` on ``device`` (and ``dtype``): non-blocking when it comes from pageable host memory
    to a CUDA device (see the module docstring), else as :meth:`torch.Tensor.to`. A pinned source
    is copied truly asynchronously, so an in-place change to it right after the call could reach
    the device: it keeps the blocking copy unless ``pinned_async`` (a batch a ``DataLoader`` pinned
    and handed over: nothing writes it again, and PyTorch's pinned-memory allocator keeps its
    memory until the copy has run). A device-to-host copy blocks anyway (the host reads it next)."""
    if t.device.type != "cpu" or torch.device(device).type not in STAGED_DEVICE_TYPES:
        return t.to(device=device, dtype=dtype)
    return t.to(device=device, dtype=dtype, non_blocking=pinned_async or not t.is_pinned())


def host_tensor(data: Sequence[object] | float | int, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """``torch.tensor(data, dtype=dtype, device=device)`` without the stream synchronisation
    that ``torch.tensor(..., device=...)`` does. For a single value, ``torch.full`` needs no copy at all."""
    return upload(torch.tensor(data, dtype=dtype), device)
