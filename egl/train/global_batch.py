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

The contract: every rank computes *the same function* of the gathered rows, and the gradient
reaches the parameters through ``loss.backward()`` followed by the ranks' gradient average (the
backward takes the gathered rows' gradient to be equal on every rank and passes no message;
each rank's share is multiplied by the number of ranks, which the averaging divides out: a
``torch.autograd.grad`` through the gather, with no average after it, is that many times the
rank's share).

Costs: one ``all_gather`` of ``[world, 3]`` integers (status, rows, and a checksum of the
tensors' dtypes and trailing shapes), read on the host (a synchronisation point), and one
``all_gather`` per tensor, padded to the largest share. Ranks may hold different numbers of
rows; tensors of another dtype or trailing shape on some rank are refused on every rank.

A check that fails on one rank before the gather (a label out of range) must not leave the
others waiting in it: run the code before the gather inside :func:`before_gather`, which, on
any exception, joins the exchange as a failed rank before re-raising; the other ranks then
raise an :class:`egl.InputError` naming it (and :meth:`egl.recipes.Recipe.training_step` stops
every rank at that phase, as for any failed check). ``gather_rows``'s own checks do the same.

Example:
    >>> import torch
    >>> from egl.train.global_batch import gather_rows
    >>> loss = torch.tensor([0.5, 1.5], requires_grad=True)
    >>> gather_rows(loss, torch.tensor([0, 1]))[0] is loss   # outside a distributed run: as given
    True
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from egl._check import describe, fail
from egl._transfer import host_tensor, upload

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
        InputError: tensors that do not line up (here, or another rank's), or another rank failed
            inside :func:`before_gather` (that rank raises its own error).

    Shape:
        each tensor ``N_r *``; returns ``sum_r N_r *`` each.
    """
    from egl.train.distributed import is_distributed

    with before_gather(next((t.device for t in tensors if isinstance(t, Tensor)), "cpu")):
        n = _check_rows(tensors)
    if not is_distributed():
        return tensors
    device = tensors[0].device
    tensors = tuple(upload(t, device) for t in tensors)  # (the collectives run on one device)
    sizes = _exchange(_OK, n, device, fn, _signature(tensors))
    return tuple(_GatherRows.apply(t, sizes) if t.is_floating_point() else _gather(t, sizes) for t in tensors)


def _check_rows(tensors: tuple[Any, ...]) -> int:
    """The rows of each tensor (all the same), else an InputError naming the first that differs."""
    if not tensors:
        raise fail(FN, "tensors", "at least one tensor", "none",
                   "Pass the rows to gather, e.g. gather_rows(loss, labels)")
    first = tensors[0]
    n = first.shape[0] if isinstance(first, Tensor) and first.dim() else -1
    bad = [i for i, t in enumerate(tensors) if not isinstance(t, Tensor) or t.dim() == 0 or t.shape[0] != n]
    if bad:
        t = tensors[bad[0]]
        got = f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else describe(t)
        want = f"tensors of {n} rows each (dimension 0, as the first)" if n >= 0 else "tensors of one row per sample"
        raise fail(FN, "tensors", want, f"{got} at position {bad[0]}", "Pass one row per sample of this rank's batch")
    return n


def _signature(tensors: tuple[Tensor, ...]) -> int:
    """A checksum of the tensors' dtypes and trailing shapes (equal on every rank, or refused)."""
    text = ";".join(f"{t.dtype}{tuple(t.shape[1:])}" for t in tensors)
    return zlib.crc32(text.encode())


@contextmanager
def before_gather(device: torch.device | str) -> Iterator[None]:
    """Run the code that precedes a :func:`gather_rows` (its checks, the forward pass): an
    exception raised inside joins the size exchange as a failed rank (the other ranks then raise
    instead of waiting), then propagates. Outside distributed runs it only propagates."""
    try:
        yield
    except Exception:
        from egl.train.distributed import is_distributed

        if is_distributed():
            _exchange(_FAILED, 0, torch.device(device), FN, 0)
        raise


def _exchange(status: int, rows: int, device: torch.device, fn: str, signature: int) -> list[int]:
    """Every rank's row count (one all_gather, read on the host); raises on a healthy rank when
    another failed, and on every rank when the tensors' dtypes or trailing shapes differ."""
    import torch.distributed as dist

    mine = host_tensor([status, rows, signature], device, torch.int64)
    out = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(out, mine)
    table = torch.stack(out).tolist()
    failed = [r for r, (s, _, _) in enumerate(table) if s == _FAILED]
    if failed and status == _OK:
        raise fail(fn, "batch", "inputs that pass every check on every rank",
                   f"a failed input check on rank {failed[0]} before the global batch was gathered",
                   f"See rank {failed[0]}'s error, which names the argument and the fix; "
                   "parameters were not updated at this step")
    if not failed and len({sig for _, _, sig in table}) > 1:
        raise fail(fn, "tensors", "tensors of one dtype and trailing shape on every rank",
                   f"other dtypes or shapes on rank {next(r for r, row in enumerate(table) if row[2] != signature)}",
                   "Gather the same quantities on every rank (one model, one autocast setting)")
    return [n for _, n, _ in table]


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
