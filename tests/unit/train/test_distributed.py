"""egl.train.distributed outside a process group: every helper is a harmless no-op.

The real thing (2 ranks under torchrun) is tests/integration/test_distributed.py.
"""

from __future__ import annotations

import pytest
import torch

from egl.train import distributed, init_distributed


def test_helpers_are_no_ops_without_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_distributed()) == (0, 1, False)
    device = init_distributed()
    assert not torch.distributed.is_initialized()
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    distributed.average_gradients([p])
    assert p.grad.tolist() == [3.0, 3.0]
    assert distributed.all_gather_object({"a": 1}) == [{"a": 1}] and distributed.broadcast_object(5) == 5


def test_sync_optimizers_registers_no_hook_outside_distributed_runs() -> None:
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=1.0)
    with distributed.sync_optimizers({"classifier": opt}):
        assert not opt._optimizer_step_pre_hooks
