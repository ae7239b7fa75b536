"""``fit``: drive a recipe for a number of steps, logging every named loss term.

Seeds, a tqdm progress bar that can be turned off, a JSONL log (a header line with the
versions and the recipe's full config, then one line per step), optional TensorBoard
scalars, crash-safe checkpoints with bit-exact resume (:mod:`egl.train.checkpoint`), and
data-parallel training under ``torchrun`` (:mod:`egl.train.distributed`). See
``docs/training.md``.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import platform
import random
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from egl._check import check_device, check_flag, check_int, describe, fail
from egl.errors import MissingDependencyError
from egl.train import distributed as dist_utils
from egl.train.checkpoint import (CHECKPOINT_NAME, FORMAT, DataStream, as_path, check_loader, get_rng_state,
                                  latest_checkpoint, load_checkpoint, os_reason, save_checkpoint, set_rng_state)
from egl.train.ema import WeightAverage, check_ema
from egl.train.grad_clip import check_grad_clip, clip_gradients, read_norms
from egl.train.loss_scale import LossScaler
from egl.train.lr_schedule import (LRSchedule, check_resumed, describe_schedulers, quiet_order_warning,
                                  resolve_schedulers, step_schedulers)
from egl.train.validation import Validation

if TYPE_CHECKING:
    from egl.recipes.base import Recipe

__all__ = ["fit", "seed_everything", "MissingDependencyError"]

FN = "egl.train.fit"


def _check_seed(seed: object, fn: str, *, or_none: bool = False) -> int:
    """An int (NumPy's too, not a bool) that torch can seed with: in [-2**63, 2**64 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -2**63 <= int(seed) < 2**64:
        what = "an int or None" if or_none else "an int"
        raise fail(fn, "seed", f"{what} (an int in [-2**63, 2**64 - 1], what torch.manual_seed takes)",
                   repr(seed)[:100], "Pass an int seed, e.g. seed=0" + (", or None" if or_none else ""))
    return int(seed)  # (NumPy ints too: Python's random.seed refuses them)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (when installed) and torch (CPU and CUDA).

    Raises:
        InputError: ``seed`` is not an int in ``[-2**63, 2**64 - 1]`` (a bool is not).
    """
    seed = _check_seed(seed, "egl.train.seed_everything")
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _versions() -> dict[str, str]:
    import egl

    out = {"egl": str(egl.__version__), "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import timm

        out["timm"] = str(timm.__version__)
    except ImportError:  # pragma: no cover
        pass
    return out


def _summary_writer(log_dir: str | os.PathLike[str]) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter``, or a clear error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise MissingDependencyError(
            f"{FN}: 'tensorboard_dir' needs the tensorboard package, which is not installed ({exc}). "
            "Run `pip install tensorboard`, or leave tensorboard_dir=None (the JSONL log has every term)."
        ) from exc
    try:
        return SummaryWriter(log_dir=str(log_dir))
    except OSError as exc:  # a file of that name, or a folder that cannot be created
        raise fail(FN, "tensorboard_dir", "a folder that can be created and written", f"'{log_dir}' ({os_reason(exc)})",
                   "Pass a path in a writable folder, or tensorboard_dir=None") from exc


def _open_log(path: Path) -> Any:
    """``path`` opened for appending (its folder created), or an error naming ``log_path``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise fail(FN, "log_path", "a file that can be created and appended to", f"'{path}' ({os_reason(exc)})",
                   "Pass a path in a writable folder, or log_path=None") from exc


def _check_checkpoint_dir(path: Path) -> None:
    """Create ``checkpoint_dir`` and check that ``last.pt`` can be written there (a file of that
    name, or an unwritable place, raised an OSError only at the first save)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(FN, "checkpoint_dir", "a folder that can be created and written", f"'{path}' ({os_reason(exc)})",
                   "Pass a path in a writable folder") from exc
    last = path / CHECKPOINT_NAME
    if (last.exists() and not last.is_file()) or not os.access(path, os.W_OK | os.X_OK):
        got = f"'{last}', not a file" if last.exists() and not last.is_file() else f"'{path}', not writable"
        raise fail(FN, "checkpoint_dir", f"a writable folder where '{CHECKPOINT_NAME}' can be written", got,
                   "Pass another checkpoint_dir")


def _rank_state(stream: DataStream, device: torch.device) -> dict[str, Any]:
    return {"rng": get_rng_state(device, stream.generators), "data": stream.state_dict()}


def _save(path: Path, recipe: "Recipe", opts: dict[str, torch.optim.Optimizer], step: int,
          stream: DataStream, device: torch.device, scalers: dict[str, LossScaler] | None,
          validation: Validation | None = None, numerics: dict[str, Any] | None = None,
          train_seconds: float = 0.0, schedulers: dict[str, Any] | None = None,
          average: WeightAverage | None = None) -> None:
    ranks = dist_utils.all_gather_object(_rank_state(stream, device))  # collective: every rank
    if dist_utils.rank() != 0:
        return
    state = {"format": FORMAT, "step": step, "train_seconds": train_seconds, "recipe_name": recipe.name,
             "recipe_class": f"{type(recipe).__module__}.{type(recipe).__qualname__}", "config": recipe.config(),
             "versions": _versions(), "world_size": len(ranks), "recipe": recipe.state_dict(),
             "optimizers": {k: o.state_dict() for k, o in opts.items()},
             "optimizer_classes": {k: type(o).__qualname__ for k, o in opts.items()}, "ranks": ranks}
    if scalers is not None:
        state["loss_scalers"] = {k: sc.state_dict() for k, sc in scalers.items()}
    if validation is not None:
        state["validation"] = validation.state_dict()
    if numerics is not None:
        state["numerics"] = numerics
    if schedulers:
        state["schedulers"] = {k: s.state_dict() for k, s in schedulers.items()}
    if average is not None:
        state["ema"] = average.state_dict()
    save_checkpoint(state, path)


def _resume(path: Path, recipe: "Recipe", opts: dict[str, torch.optim.Optimizer], stream: DataStream,
            device: torch.device, scalers: dict[str, LossScaler] | None, validation: Validation | None = None,
            numerics: dict[str, Any] | None = None, schedulers: dict[str, Any] | None = None,
            average: WeightAverage | None = None) -> tuple[int, float]:
    """Load the checkpoint (rank 0 reads, every rank receives it) into the run; returns its step
    and training seconds (0 from checkpoints of older egl versions). ``numerics`` (precision and
    memory layout of this run) is compared with the checkpoint's."""
    ckpt = dist_utils.broadcast_object(load_checkpoint(path) if dist_utils.rank() == 0 else None)
    needed = ("step", "recipe", "optimizers", "ranks")
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in needed):  # (a torch.save of something else)
        got = describe(ckpt) if not isinstance(ckpt, dict) else f"a dict with keys {sorted(map(str, ckpt))[:8]}"
        raise fail(FN, "resume", f"a training checkpoint written by egl.train.fit (keys {list(needed)}) in {path}",
                   got, "Use another checkpoint_dir, or resume=False to start afresh (nothing was loaded)")
    saved = ckpt.get("numerics")  # (absent from checkpoints of older egl versions)
    if saved is not None and numerics is not None and saved != numerics:
        was = ", ".join(f"{k}={v!r}" for k, v in saved.items())
        warnings.warn(f"{FN}: the checkpoint in {path.parent} was trained with {was}; this run has "
                      + ", ".join(f"{k}={v!r}" for k, v in numerics.items())
                      + ". Training goes on, but not as the interrupted run would have (not bit-exact); pass "
                      + f"{was} to continue it as it was.", stacklevel=3)
    this_class = f"{type(recipe).__module__}.{type(recipe).__qualname__}"
    if ckpt.get("recipe_name") != recipe.name or ckpt.get("recipe_class", this_class) != this_class:  # unnamed too
        raise fail(FN, "resume", f"a checkpoint of a '{recipe.name or this_class}' recipe",
                   f"one of '{ckpt.get('recipe_name') or ckpt.get('recipe_class')}' in {path}",
                   "Use another checkpoint_dir, or resume=False to start afresh")
    if set(ckpt["optimizers"]) != set(opts):
        raise fail(FN, "optimizers", f"the phases of the checkpoint {sorted(ckpt['optimizers'])}", f"{sorted(opts)}",
                   "Pass one optimizer per phase, as when the checkpoint was written")
    classes = ckpt.get("optimizer_classes", {})  # (absent from checkpoints of older egl versions)
    wrong = {k: (classes[k], type(o).__qualname__) for k, o in opts.items()
             if k in classes and classes[k] != type(o).__qualname__}
    if wrong:
        raise fail(FN, "optimizers", "the optimizer classes of the checkpoint "
                   + ", ".join(f"{k}: {a}" for k, (a, _) in wrong.items()),
                   ", ".join(f"{k}: {b}" for k, (_, b) in wrong.items()),
                   "Resume with the same optimizer classes (their state and hyperparameters come from the "
                   "checkpoint), or resume=False to start afresh")
    _check_schedulers(ckpt, schedulers or {}, path)
    saved_decay = (ckpt.get("ema") or {}).get("decay")
    if saved_decay != (None if average is None else average.decay):
        raise fail(FN, "ema", f"the weight average the checkpoint in {path.parent} was trained with: "
                   f"ema={saved_decay!r}", f"ema={None if average is None else average.decay!r}",
                   f"Resume with ema={saved_decay!r}, or resume=False to start afresh")
    _check_same_tensors(ckpt["recipe"], recipe.state_dict(), path)  # before anything is overwritten
    recipe.load_state_dict(ckpt["recipe"])
    for name, opt in opts.items():
        opt.load_state_dict(ckpt["optimizers"][name])
    for name, sched in (schedulers or {}).items():
        sched.load_state_dict(ckpt["schedulers"][name])
    if average is not None:
        average.load_state_dict(ckpt["ema"])
    for name, sc in (scalers or {}).items():  # a float16 run resumed from a float16 checkpoint
        if name in ckpt.get("loss_scalers", {}):
            sc.load_state_dict(ckpt["loss_scalers"][name])
    if validation is not None and "validation" in ckpt:
        validation.load_state_dict(ckpt["validation"])
    elif validation is not None and validation.select == "acc" and int(ckpt["step"]) > 0:
        warnings.warn(f"{FN}: the checkpoint in {path.parent} was written without validation: select='acc' chooses "
                      f"among the measurements after step {int(ckpt['step'])} only.", stacklevel=3)
    ranks = ckpt["ranks"]
    if len(ranks) != dist_utils.world_size():
        warnings.warn(f"{FN}: resuming on {dist_utils.world_size()} ranks from a checkpoint written on {len(ranks)}: "
                      "the data order and random draws are not replayed exactly.", stacklevel=3)
    mine = ranks[dist_utils.rank() % len(ranks)]
    stream.load_state_dict(mine["data"])
    set_rng_state(mine["rng"], device, stream.generators)
    return int(ckpt["step"]), float(ckpt.get("train_seconds", 0.0))


def _check_schedulers(ckpt: dict[str, Any], schedulers: dict[str, Any], path: Path) -> None:
    """The run's schedulers are the checkpoint's phases' (a schedule dropped or added on resume
    would train on at another rate than the interrupted run: refused, naming both)."""
    saved = sorted(ckpt.get("schedulers", {}))
    if saved != sorted(schedulers):
        raise fail(FN, "lr_schedule", f"schedulers for the phases the checkpoint in {path.parent} has them for: "
                   f"{saved}", f"{sorted(schedulers)}",
                   "Resume with the lr_schedule (or schedulers) the run started with, or resume=False to start afresh")
    check_resumed(ckpt.get("schedulers", {}), schedulers, FN, str(path.parent))


def _check_same_tensors(saved: dict[str, Any], mine: dict[str, Any], path: Path) -> None:
    """The checkpoint's recipe holds exactly this recipe's tensors, shapes included: a
    ``load_state_dict`` that fails half-way has already overwritten what fitted."""
    missing, extra = sorted(set(mine) - set(saved)), sorted(set(saved) - set(mine))
    shapes = [f"{k} {list(saved[k].shape)} (here {list(v.shape)})" for k, v in mine.items()
              if k in saved and hasattr(v, "shape") and hasattr(saved[k], "shape") and saved[k].shape != v.shape]
    if missing or extra or shapes:
        got = "; ".join(part for part in (
            f"missing {missing[:5]}" if missing else "", f"unexpected {extra[:5]}" if extra else "",
            f"other shapes: {', '.join(shapes[:5])}" if shapes else "") if part)
        raise fail(FN, "resume", f"a checkpoint of this recipe's model (same tensors and shapes) in {path}", got,
                   "Use another checkpoint_dir, or resume=False to start afresh (nothing was loaded)")


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def resolve_channels_last(channels_last: bool | str, device: torch.device | str, precision: str) -> bool:
    """What ``fit(channels_last=...)`` does on ``device`` at ``precision``: a bool is kept;
    ``"auto"`` is True for ``"bf16"`` / ``"fp16"`` on CUDA, False otherwise."""
    if channels_last == "auto":
        kind = device.type if isinstance(device, torch.device) else str(device).split(":")[0]
        return kind == "cuda" and precision in ("bf16", "fp16")
    return bool(channels_last)


def fit(recipe: "Recipe", loader: Iterable[Any], steps: int, *, seed: int | None = None,
        optimizers: dict[str, torch.optim.Optimizer] | None = None, log_path: str | os.PathLike[str] | None = None,
        progress: bool = True, device: torch.device | str | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None, checkpoint_every: int = 1000, resume: bool = False,
        tensorboard_dir: str | os.PathLike[str] | None = None, precision: str = "fp32",
        loss_scale: dict[str, Any] | None = None, channels_last: bool | str = "auto",
        validation: Validation | None = None, lr_schedule: LRSchedule | str | dict[str, Any] | None = None,
        schedulers: dict[str, Any] | None = None,
        grad_clip: float | dict[str, float] | None = None, ema: float | None = None) -> list[dict[str, float]]:
    """Train ``recipe`` until ``steps`` steps are done, cycling over ``loader``.

    ``recipe.train()`` is called for the call; every module gets back the mode it had before
    when the call returns or raises (a model in eval mode is in eval mode again afterwards).

    Args:
        recipe: any :class:`egl.recipes.Recipe`.
        loader: yields batches (``(x, y)``, ``(x, y, domain)`` or dicts); re-iterated each epoch.
            Under ``torch.distributed`` give each rank its own shard (e.g. a
            ``DistributedSampler``); ``sampler.set_epoch(epoch)`` is called for you.
        steps: total number of optimisation steps (each runs every active phase once);
            a resumed run continues from the checkpoint's step up to ``steps``.
        seed: seeds Python, NumPy and torch first (same machine, same seed: same run).
        optimizers: one per phase name; default ``recipe.configure_optimizers()``.
        log_path: JSONL file (appended to): a header line (``"event": "start"`` or
            ``"resume"``, versions, ``recipe.config()``) then one line per step. Rank 0 only.
        progress: show a tqdm progress bar (rank 0 only).
        device: move batches there (default: the device of the recipe's parameters).
        checkpoint_dir: save ``checkpoint_dir/last.pt`` atomically every ``checkpoint_every``
            steps and at the end (rank 0 writes).
        checkpoint_every: steps between checkpoints (1000).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists (else start afresh),
            replaying parameters, optimisers, RNGs and the data order exactly.
        tensorboard_dir: also write every term as a TensorBoard scalar (needs ``pip install tensorboard``).
        precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"``: mixed precision with
            ``torch.autocast`` around each step, on the GPU or the CPU. bfloat16 needs no loss
            scaling; float16 (for GPUs without bfloat16, such as the T4 and V100) gets one
            dynamic :class:`egl.train.LossScaler` per phase: overflowing steps are skipped (on
            every rank) and logged as ``"<phase>/skipped"``, the scale as ``"<phase>/loss_scale"``;
            checkpoints keep the scales.
        loss_scale: with ``precision="fp16"``, the arguments of every phase's
            :class:`egl.train.LossScaler` (``init_scale``, ``growth_factor``, ``backoff_factor``,
            ``growth_interval``; default: its defaults, GradScaler's). A resumed run continues
            with the checkpoint's scales and factors.
        channels_last: put the recipe's modules and every batch in channels-last memory format
            (True), or not (False). ``"auto"`` (default): channels-last for mixed precision
            (``"bf16"``/``"fp16"``) on CUDA, where it took every recipe's step to 0.50-0.58x its
            NCHW time on an H200 (cuDNN's 16-bit convolutions run channels-last; an NCHW model pays
            a transpose around each), the input's layout otherwise (float32 on a GPU and the CPU
            were not measured to gain). See :func:`resolve_channels_last`.
        validation: a :class:`egl.train.Validation`: accuracy on validation batches every so
            many steps and after the last, logged as ``val/acc`` and ``val/loss`` in that
            step's row; with ``select="acc"`` the recipe ends with the weights of its most
            accurate evaluation (a ``"select"`` event in the log says which).
        lr_schedule: every phase's learning rate over the run (:class:`egl.train.LRSchedule`, a
            shape name ``"constant"``/``"cosine"``/``"linear"``, or a dict of its fields, e.g.
            ``{"shape": "cosine", "warmup": 500}``); None (default): the optimisers' own rate,
            constant. Indexed by the run's step; each row logs ``"<phase>/lr"``, the rate that
            step used; checkpoints keep the schedulers' state.
        schedulers: your own ``torch.optim.lr_scheduler`` schedulers instead, one per phase name
            at most, built on the ``optimizers`` you pass; stepped once after every step.
        grad_clip: clip each phase's gradients to this total L2 norm before its optimiser steps
            (one number for every phase, or ``{phase: max_norm}``); the norm before clipping is
            logged as ``"<phase>/grad_norm"``. None (default): no clipping (DomainBed, ALIGN).
            See :mod:`egl.train.grad_clip`.
        ema: keep an exponential moving average of ``recipe.model``'s weights with this decay
            (e.g. 0.999), bias-corrected; validation measures the average, and the call ends with
            the average in ``recipe.model`` (or, with ``select="acc"``, the best one measured).
            Checkpoints keep it. None (default): no average. See :mod:`egl.train.ema`.

    Returns:
        The per-step logs of this call (``{"step": i, "<phase>/<term>": value, ...}``).

    Raises:
        NonFiniteLossError: a loss term became NaN or infinite; the run stops and the last
            checkpoint stays as it was.
        MissingDependencyError: ``tensorboard_dir`` without the tensorboard package.
        InputError: an argument of the wrong type or value, before anything is trained: among
            others a ``seed`` torch cannot take, a ``device`` this machine lacks, a non-bool
            ``progress`` / ``resume``, or a ``log_path`` / ``checkpoint_dir`` / ``tensorboard_dir``
            that is not a path or where nothing can be written (``checkpoint_dir`` is created at
            the start, so that this is known before the first checkpoint is due).

    Example:
        >>> # recipe.fit(loader, steps=5000, seed=0, log_path="run/log.jsonl",
        >>> #            checkpoint_dir="run/ckpt", checkpoint_every=500, resume=True)
    """
    from egl.recipes.batch import as_batch

    from egl.recipes.base import Recipe

    if not isinstance(recipe, Recipe):
        raise fail(FN, "recipe", "an egl recipe", f"a {type(recipe).__name__}",
                   "Build one around the model, e.g. egl.recipes.erm(model) or egl.recipes.align(model), "
                   "and call recipe.fit(loader, steps)")
    check_loader(loader)
    seed = None if seed is None else _check_seed(seed, FN, or_none=True)
    check_flag(progress, FN, "progress")  # (progress="no" showed the bar, resume="no" resumed)
    check_flag(resume, FN, "resume")
    fix = "Pass a str or pathlib.Path, or None"
    log_file = None if log_path is None else as_path(log_path, FN, "log_path", fix)
    ckpt_dir = None if checkpoint_dir is None else as_path(checkpoint_dir, FN, "checkpoint_dir", fix)
    tb_dir = None if tensorboard_dir is None else as_path(tensorboard_dir, FN, "tensorboard_dir", fix)
    if log_file is not None and log_file.is_dir():
        raise fail(FN, "log_path", "a JSONL file to append to", f"'{log_file}', a directory",
                   f"Pass a file in it, e.g. log_path='{log_file / 'log.jsonl'}'")
    check_int(steps, FN, "steps", fix="Pass the number of steps to train")
    check_int(checkpoint_every, FN, "checkpoint_every", low=1, fix="Pass a number of steps, e.g. checkpoint_every=500")
    if precision not in ("fp32", "bf16", "fp16"):
        raise fail(FN, "precision", "'fp32', 'bf16' or 'fp16'", repr(precision),
                   "Use precision='bf16' for mixed precision ('fp16' on GPUs without bfloat16)")
    if loss_scale is not None:
        keys = ("init_scale", "growth_factor", "backoff_factor", "growth_interval")
        if precision != "fp16":
            raise fail(FN, "loss_scale", "None unless precision='fp16' (only float16 is loss-scaled)",
                       repr(loss_scale), "Pass precision='fp16', or leave loss_scale out")
        if not isinstance(loss_scale, dict) or not set(loss_scale) <= set(keys):
            raise fail(FN, "loss_scale", f"a dict with keys among {list(keys)}", repr(loss_scale),
                       "Pass e.g. loss_scale={'init_scale': 2.0**10, 'growth_interval': 500}")
        LossScaler(**loss_scale)  # its own checks, before any training starts
    if not (isinstance(channels_last, bool) or channels_last == "auto"):  # (1 == True: a number is refused too)
        raise fail(FN, "channels_last", "True, False or 'auto'", repr(channels_last),
                   "Pass channels_last='auto' (channels-last for mixed precision on CUDA) or a bool")
    if validation is not None and not isinstance(validation, Validation):
        raise fail(FN, "validation", "an egl.train.Validation", type(validation).__name__,
                   "Pass validation=Validation(val_loader, every=100, select='acc')")
    if resume and checkpoint_dir is None:
        raise fail(FN, "checkpoint_dir", "a directory when resume=True", "None",
                   "Pass the checkpoint_dir of the run to resume")
    if device is not None:
        device = check_device(device, FN, "device")
    main = dist_utils.rank() == 0
    if seed is not None:
        seed_everything(seed)
    opts = recipe.check_optimizers(optimizers, FN) if optimizers is not None else recipe.configure_optimizers()
    scheds = resolve_schedulers(lr_schedule, schedulers, opts, steps, FN)
    max_norms = check_grad_clip(grad_clip, sorted(opts), FN)
    ema = check_ema(ema, FN)
    if device is None:
        p = next(recipe.parameters(), None)
        device = p.device if p is not None else "cpu"
    device = torch.device(device)
    if precision == "fp16" and device.type == "cpu" and _torch_version() < (2, 3):
        raise fail(FN, "precision", "'fp32' or 'bf16' on the CPU with torch < 2.3 (float16 loss scaling "
                   "has no CPU kernel before 2.3)", f"'fp16' with torch {torch.__version__}",
                   "Use precision='bf16', or torch >= 2.3")
    if ckpt_dir is not None and main:  # after the other checks (no empty folder left by a bad argument), and
        _check_checkpoint_dir(ckpt_dir)  # now, not at the first save checkpoint_every steps into the run
    writer = _summary_writer(tb_dir) if tb_dir is not None and main else None
    channels_last = resolve_channels_last(channels_last, device, precision)
    numerics = {"precision": precision, "channels_last": channels_last}  # recorded in checkpoints, checked on resume
    modes = [(m, m.training) for m in recipe.modules()]  # restored on the way out
    try:
        recipe.train()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            recipe.to(memory_format=memory_format)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        autocast = (lambda: torch.autocast(device.type, dtype=half)) if half is not None else contextlib.nullcontext
        scalers = {name: LossScaler(**(loss_scale or {})) for name in opts} if precision == "fp16" else None
        average = WeightAverage(recipe.model, ema) if ema is not None else None
        step_kwargs = {"scalers": scalers} if scalers is not None else {}
        stream = DataStream(loader, device)
        ckpt_path = ckpt_dir / CHECKPOINT_NAME if ckpt_dir is not None else None
        start, prior_seconds, began = 0, 0.0, time.time()
        resume_from = dist_utils.broadcast_object(latest_checkpoint(checkpoint_dir) if resume and main else None)
        if resume_from is not None:
            start, prior_seconds = _resume(Path(resume_from), recipe, opts, stream, device, scalers, validation,
                                           numerics, scheds, average)
            if start >= steps:
                warnings.warn(f"{FN}: the checkpoint in {checkpoint_dir} is at step {start}, and steps={steps}: "
                              "nothing is trained (pass a larger steps to train on).", stacklevel=2)
        else:
            dist_utils.broadcast_module(recipe)  # every rank starts from rank 0's weights
        late = [p for p in recipe.phases() if p.start_step >= steps > start]
        if late and main:  # e.g. ALIGN's masker after a 200-step warm-up, in a 100-step run
            warnings.warn(f"{FN}: " + "; ".join(f"the '{p.name}' phase starts at step {p.start_step}" for p in late)
                          + f", and this run ends at step {steps}: it never runs. Train for more steps, or start "
                          "it earlier (ALIGN: warmup_steps).", stacklevel=2)
        history: list[dict[str, float]] = []
        log = None
        bar = None
        try:
            if log_file is not None and main:
                log = _open_log(log_file)
                header = {"event": "resume" if resume_from is not None else "start", "recipe": recipe.name,
                          "recipe_class": f"{type(recipe).__module__}.{type(recipe).__qualname__}",
                          "config": recipe.config(), "steps": steps, "start_step": start, "seed": seed,
                          "device": str(device), "world_size": dist_utils.world_size(),
                          "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
                          "checkpoint_every": checkpoint_every, "versions": _versions(), "time": time.time()}
                if scheds:
                    header["lr_schedule"] = describe_schedulers(scheds)
                if ema is not None:
                    header["ema"] = ema
                log.write(json.dumps(header) + "\n")
                log.flush()
            if progress and main:
                from tqdm.auto import tqdm

                bar = tqdm(total=steps, initial=min(start, steps), desc=recipe.name or "train", leave=False)
            with dist_utils.sync_optimizers(opts), clip_gradients(opts, max_norms) as norms, \
                    quiet_order_warning(bool(scheds)):  # average, then clip
                for step in range(start, steps):
                    batch = as_batch(next(stream), FN).to(device)
                    if channels_last:
                        batch.x = batch.x.contiguous(memory_format=memory_format)
                    rates = {k: float(opts[k].param_groups[0]["lr"]) for k in scheds}  # the rates this step uses
                    with autocast():
                        logs = recipe.training_step(batch, step, opts, **step_kwargs)
                    logs.update(read_norms(norms))
                    if scheds:  # the rate of each phase that ran (ALIGN's masker: after its warm-up)
                        ran = {term.split("/")[0] for term in logs}
                        logs.update({f"{k}/lr": v for k, v in rates.items() if k in ran})
                        step_schedulers(scheds)
                    dist_utils.broadcast_buffers(recipe)
                    if average is not None:
                        average.update(recipe.model)
                    done = step + 1
                    if validation is not None and validation.due(done, steps):
                        with average.swapped(recipe.model) if average is not None else contextlib.nullcontext():
                            logs.update(validation.run(recipe, done, device, autocast, memory_format))
                    row = {"step": step, **logs}
                    history.append(row)
                    if log is not None:
                        log.write(json.dumps(row) + "\n")
                        log.flush()
                    if writer is not None:
                        for k, v in logs.items():
                            writer.add_scalar(k, v, step)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in logs.items() if k.endswith("total")})
                    if ckpt_path is not None and (done % checkpoint_every == 0 or done == steps):
                        _save(ckpt_path, recipe, opts, done, stream, device, scalers, validation, numerics,
                              prior_seconds + time.time() - began, scheds, average)
            if average is not None:  # the average (select="acc" then loads the best one measured)
                average.apply(recipe.model)
            if validation is not None:
                selected = validation.finish(recipe)
                if log is not None and selected is not None:
                    log.write(json.dumps({"event": "select", "select": validation.select,
                                          **{f"val/{k}" if k != "step" else k: v for k, v in selected.items()}})
                              + "\n")
        except Exception as exc:
            if log is not None:  # the reason the run stopped, for whoever reads the log later
                log.write(json.dumps({"event": "error", "step": start + len(history),
                                      "error": f"{type(exc).__name__}: {exc}"}) + "\n")
            raise
        finally:
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            if writer is not None:
                writer.close()
        return history
    finally:
        for m, was_training in modes:
            m.training = was_training
