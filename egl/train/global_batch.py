"""The global batch's rows on every rank, for losses that are not a mean over samples.

Under ``torch.distributed`` each rank holds its share of the batch, and averaging the ranks'
gradients (:func:`egl.train.distributed.average_gradients`) gives the global batch's gradient
only for a loss that is a mean over samples. A penalty that compares groups of the batch
(V-REx's variance of the domains' risks, IRM's per-domain gradients, CORAL's covariances,
MMD's kernel means) is not: computed on each share it is another, noisier estimator, and it
changes with the number of ranks. :func:`gather_rows` gives every rank the rows of every
rank, so that each computes the global batch's loss; its backward hands each rank the
gradient of its own rows, so that the averaged gradients are those of one process training
on the global batch.

The contract: every rank computes *the same function* of the gathered rows (the backward
takes the gathered rows' gradient to be equal on every rank and passes no message; each
rank's share is multiplied by the number of ranks, which the averaging divides out).

Costs: one ``all_gather`` of ``[world, 2]`` sizes, read on the host (a synchronisation
point), and one ``all_gather`` per tensor, padded to the largest share. Ranks may hold
different numbers of rows.

A check that fails on one rank before the gather (a label out of range) must not leave the
others waiting in it: run the checks inside :func:`before_gather`, which joins the size
exchange as a failed rank before re-raising; the other ranks then raise an
:class:`egl.InputError` naming it (and :meth:`egl.recipes.Recipe.training_step` stops every
rank at that phase, as for any failed check).

Example:
    >>> import torch
    >>> from egl.train.global_batch import gather_rows
    >>> loss = torch.tensor([0.5, 1.5], requires_grad=True)
    >>> gather_rows(loss, torch.tensor([0, 1]))[0] is loss   # outside a distributed run: as given
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from egl._check import fail
from egl.errors import InputError

__all__ = ["gather_rows", "before_gather"]

FN = "egl.train.global_batch.gather_rows"
_OK, _FAILED = 1, 0


def gather_rows(*tensors: Tensor, fn: str = FN) -> tuple[Tensor, ...]:
    """Every rank's rows of each tensor, concatenated along dimension 0 in rank order.

    Differentiable (floating tensors): the backward returns the gathered gradient's rows of
    this rank, times the number of ranks (see the module docstring for the contract). Outside
    distributed runs the tensors are returned as given.

    Args:
        tensors: this rank's rows, all with the same number of rows (dimension 0) and, across
            ranks, the same trailing shape and dtype.
        fn: the public function named in the error when another rank failed its checks.

    Raises:
        InputError: another rank failed a check inside :func:`before_gather` (that rank raises
            its own error, naming the argument).

    Shape:
        each tensor ``N_r *``; returns ``sum_r N_r *`` each.
    """
    if not tensors:
        raise fail(FN, "tensors", "at least one tensor", "none",
                   "Pass the rows to gather, e.g. gather_rows(loss, labels)")
    n = tensors[0].shape[0] if tensors[0].dim() else -1
    bad = [i for i, t in enumerate(tensors) if not isinstance(t, Tensor) or t.dim() == 0 or t.shape[0] != n]
    if bad:
        t = tensors[bad[0]]
        got = f"{tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        want = f"tensors of {n} rows each (dimension 0, as the first)" if n >= 0 else "tensors of one row per sample"
        raise fail(FN, "tensors", want,
                   f"shape {got} at position {bad[0]}", "Pass one row per sample of this rank's batch")
    from egl.train.distributed import is_distributed

    if not is_distributed():
        return tensors
    sizes = _exchange(_OK, n, tensors[0].device, fn)
    return tuple(_GatherRows.apply(t, sizes) if t.is_floating_point() else _gather(t, sizes) for t in tensors)


@contextmanager
def before_gather(device: torch.device | str) -> Iterator[None]:
    """Run the checks that precede a :func:`gather_rows`: an :class:`egl.InputError` raised
    inside joins the size exchange as a failed rank (the other ranks then raise instead of
    waiting), then propagates. Outside distributed runs it only propagates."""
    try:
        yield
    except InputError:
        from egl.train.distributed import is_distributed

        if is_distributed():
            _exchange(_FAILED, 0, torch.device(device), FN)
        raise


def _exchange(status: int, rows: int, device: torch.device, fn: str) -> list[int]:
    """Every rank's row count (one all_gather, read on the host); raises on a healthy rank when
    another failed."""
    import torch.distributed as dist

    mine = torch.tensor([status, rows], dtype=torch.int64, device=device)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    table = torch.stack(out).tolist()
    failed = [r for r, (s, _) in enumerate(table) if s == _FAILED]
    if failed and status == _OK:
        raise fail(fn, "batch", "inputs that pass every check on every rank",
                   f"a failed input check on rank {failed[0]} before the global batch was gathered",
                   f"See rank {failed[0]}'s error, which names the argument and the fix; "
                   "parameters were not updated at this step")
    return [n for _, n in table]


def _gather(t: Tensor, sizes: list[int]) -> Tensor:
    """All ranks' rows of ``t``, padded to the largest share for the collective, then trimmed."""
    import torch.distributed as dist

    top = max(sizes)
    padded = t if t.shape[0] == top else torch.cat([t, t.new_zeros(top - t.shape[0], *t.shape[1:])])
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:n] for o, n in zip(out, sizes)])


class _GatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, t: Tensor, sizes: list[int]) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        me = dist.get_rank()
        ctx.start, ctx.rows, ctx.world = sum(sizes[:me]), sizes[me], len(sizes)
        return _gather(t.detach(), sizes)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        # Every rank computed the same function of the gathered rows: the gradient above is the
        # same on every rank, and this rank's rows take their share of it. The gradient average
        # divides the factor out: sum over ranks of J_r^T g_r, the global batch's gradient.
        return grad[ctx.start:ctx.start + ctx.rows] * ctx.world, None
