"""Data-parallel training without wrapping the recipe: gradients are averaged by hand.

When ``torch.distributed`` is initialised (``torchrun`` then ``init_process_group``),
:func:`egl.train.fit` keeps every rank's copy of the recipe identical the way
``DistributedDataParallel`` does, but without wrapping any module:

* at the start, parameters and buffers are broadcast from rank 0;
* before every ``optimizer.step()`` (an optimizer step pre-hook), the gradients of that
  optimizer's parameters are averaged over the ranks with one ``all_reduce`` per dtype;
* after every training step, buffers (BatchNorm statistics) are broadcast from rank 0,
  as DDP's ``broadcast_buffers=True`` does before each forward.

Why not ``DistributedDataParallel``: DDP only reduces the gradients of parameters reached
through *its own* ``forward``. Recipes call more than ``model(x)``: Grad-CAM's closed form
runs ``model.forward_features`` and the head directly, the masker phase runs the frozen
classifier, and double backward (``create_graph=True``) is outside what DDP supports.
Averaging after ``backward`` is correct whatever the recipe's forward looks like, works for
every phase and every third-party recipe, and leaves ``recipe.model`` the plain module (so
checkpoints and explainers see no ``module.`` prefix). The cost is that communication does
not overlap with the backward pass as DDP's bucketed hooks do.

A parameter that received no gradient on some ranks counts as zero there (as with DDP's
``find_unused_parameters``); a parameter with no gradient on any rank keeps ``grad=None``.

Example:
    >>> # train.py, launched with `torchrun --nproc_per_node 2 train.py`
    >>> # device = egl.train.init_distributed()
    >>> # recipe = recipes.align(model).to(device)
    >>> # recipe.fit(loader_of_this_ranks_shard, steps=1000, checkpoint_dir="ckpt")
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import fail
from egl._transfer import host_tensor

__all__ = ["init_distributed", "is_distributed", "rank", "world_size", "first_rank_with", "first_failure",
           "average_gradients",
           "broadcast_module", "broadcast_buffers", "sync_optimizers", "all_gather_object",
           "broadcast_object"]


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside distributed runs)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 outside distributed runs)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def first_rank_with(flag: bool, device: torch.device | str = "cpu") -> int:
    """The lowest rank where ``flag`` is true, or -1 (a collective: every rank must call it).

    Outside distributed runs: 0 if ``flag`` else -1. Used so that a failure detected on one
    rank (a non-finite loss) stops every rank, instead of leaving the others waiting in the
    next gradient all-reduce.

    Args:
        flag: this rank's condition. device: where the one-element tensor is reduced (CPU for
            gloo, this rank's GPU for NCCL).

    Returns:
        The lowest rank whose ``flag`` is true, or -1 when none is.

    Example:
        >>> first_rank_with(False), first_rank_with(True)   # outside a distributed run
        (-1, 0)
    """
    return first_failure(1 if flag else 0, device)[0]


def first_failure(code: int, device: torch.device | str = "cpu") -> tuple[int, int]:
    """``(rank, code)`` of the highest ``code`` over the ranks (lowest rank on ties), or
    ``(-1, 0)`` when every rank passed 0 (a collective: every rank must call it).

    ``code`` says what happened on this rank (0: nothing; higher is more severe, below 16), so
    that the other ranks can act alike: raise the matching error, or skip the step.

    Example:
        >>> first_failure(0), first_failure(2)   # outside a distributed run
        ((-1, 0), (0, 2))
    """
    if not isinstance(code, int) or not 0 <= code < 16:
        raise fail("egl.train.distributed.first_failure", "code", "an int in [0, 16)", repr(code),
                   "Use small codes for kinds of failure")
    if not is_distributed():
        return (0, code) if code else (-1, 0)
    import torch.distributed as dist

    n = world_size()
    t = torch.full((1,), (16 - code) * n + rank() if code else 16 * n, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    first = int(t.item())
    return (first % n, 16 - first // n) if first < 16 * n else (-1, 0)


def init_distributed(backend: str | None = None) -> torch.device:
    """Initialise the process group from ``torchrun``'s environment and return this rank's device.

    NCCL with ``cuda:LOCAL_RANK`` when CUDA is available, gloo on CPU otherwise (``backend``
    overrides). Without ``torchrun``'s variables (``RANK``, ``WORLD_SIZE``) nothing is
    initialised and the single-process device is returned, so one script serves both.
    """
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return device


def _buckets(tensors: Iterable[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[Tensor]]:
    out: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        out.setdefault((t.device, t.dtype), []).append(t)
    return out


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average ``p.grad`` over all ranks, in place (one ``all_reduce`` per device and dtype).

    Every rank must call it with the same parameters in the same order. Missing gradients
    count as zero; one missing everywhere stays ``None``. A no-op outside distributed runs.
    """
    if not is_distributed():
        return
    import torch.distributed as dist

    n = dist.get_world_size()
    unique: dict[int, nn.Parameter] = {}
    for p in params:
        if p.requires_grad:
            unique.setdefault(id(p), p)
    for (_, dtype), group in _buckets(unique.values()).items():
        # Gradients (zeros where missing) then one presence flag per parameter, in one buffer.
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
                         + [host_tensor([float(p.grad is not None) for p in group], group[0].device, dtype)])
        dist.all_reduce(flat)
        flat.div_(n)
        offset = 0
        for p in group:
            numel = p.numel()
            p_grad = flat[offset:offset + numel].view_as(p)
            offset += numel
            if p.grad is not None:
                p.grad.copy_(p_grad)
            else:
                p.grad = p_grad.clone()
        flags = flat[offset:]
        for p, flag in zip(group, flags.tolist()):
            if flag == 0:
                p.grad = None


def _broadcast(tensors: list[Tensor]) -> None:
    import torch.distributed as dist

    for group in _buckets(tensors).values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=0)
        offset = 0
        with torch.no_grad():
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (a no-op outside distributed runs)."""
    if is_distributed():
        _broadcast(list(module.state_dict(keep_vars=True).values()))


def broadcast_buffers(module: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics...) to every rank."""
    if is_distributed():
        _broadcast([b for b in module.buffers() if b.numel() > 0])


@contextmanager
def sync_optimizers(optimizers: dict[str, torch.optim.Optimizer]) -> Iterator[None]:
    """Within the block, every ``optimizer.step()`` first averages its gradients over the ranks.

    Implemented with ``Optimizer.register_step_pre_hook``; the hooks are removed on exit.
    Outside distributed runs nothing is registered.
    """
    if not is_distributed():
        yield
        return

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        average_gradients(p for g in opt.param_groups for p in g["params"])

    handles = [opt.register_step_pre_hook(hook) for opt in optimizers.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` outside distributed runs)."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` itself outside distributed runs)."""
    if not is_distributed():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
