"""gather_rows and before_gather outside distributed runs (the two-rank behaviour is tested under
torchrun in tests/integration/test_distributed.py)."""

from __future__ import annotations

import pytest
import torch

from egl import InputError
from egl.train.global_batch import before_gather, gather_rows


def test_outside_distributed_runs_rows_come_back_as_given() -> None:
    loss = torch.tensor([0.5, 1.5], requires_grad=True)
    labels = torch.tensor([[0], [1]])
    got = gather_rows(loss, labels)
    assert got[0] is loss and got[1] is labels


@pytest.mark.parametrize("tensors, message", [
    ((), "'tensors' expected at least one tensor, got none"),
    ((torch.zeros(3), torch.zeros(2)), "expected tensors of 3 rows each (dimension 0, as the first), got shape (2,) "
                                       "at position 1"),
    ((torch.zeros(3), torch.tensor(1.0)), "got shape () at position 1"),
    ((torch.zeros(3), [1, 2, 3]), "got a list of length 3 at position 1"),
    (([1, 2, 3],), "expected tensors of one row per sample, got a list of length 3 at position 0"),
])
def test_rows_that_do_not_line_up_are_refused_by_name(tensors: tuple, message: str) -> None:
    with pytest.raises(InputError, match="egl.train.global_batch.gather_rows") as info:
        gather_rows(*tensors)
    assert message in str(info.value)


def test_before_gather_lets_errors_through_unchanged() -> None:
    with pytest.raises(InputError, match="bad label"):
        with before_gather("cpu"):
            raise InputError("bad label")
    with pytest.raises(RuntimeError, match="other"):
        with before_gather("cpu"):
            raise RuntimeError("other")
