"""Host-to-device copies that do not wait for the device.

A blocking host-to-device copy (``torch.tensor(data, device="cuda")``, ``t.to("cuda")``) makes
PyTorch synchronise the stream after the copy: the host waits for every kernel queued before it,
then the device idles while the host queues the next ones. Mid-step, that costs a small model
most of a step's overlap. A non-blocking copy from pageable host memory is staged before the
call returns, so the source may be freed at once, and it stays ordered on the stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["upload", "host_tensor"]


def upload(t: Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> Tensor:
    """``t`` on ``device`` (and ``dtype``): non-blocking when it comes from pageable host memory
    (staged before the call returns: nothing the caller does to ``t`` afterwards can race it),
    else as :meth:`torch.Tensor.to`. A pinned source would be copied truly asynchronously, so an
    in-place change to it right after the call could reach the device: it keeps the blocking
    copy. A device-to-host copy must block anyway (the host reads it next)."""
    return t.to(device=device, dtype=dtype, non_blocking=t.device.type == "cpu" and not t.is_pinned())


def host_tensor(data: Sequence[object] | float | int, device: torch.device | str, dtype: torch.dtype) -> Tensor:
    """``torch.tensor(data, dtype=dtype, device=device)`` without the stream synchronisation
    that ``torch.tensor(..., device=...)`` does. For a single value, ``torch.full`` needs no copy at all."""
    return upload(torch.tensor(data, dtype=dtype), device)
