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
import random
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from egl._check import check_device, check_flag, check_int, fail
from egl.errors import MissingDependencyError
from egl.train import distributed as dist_utils
from egl.train.checkpoint import CHECKPOINT_NAME, DataStream, as_path, check_loader, latest_checkpoint, os_reason
from egl.train.ema import WeightAverage, check_ema
from egl.train.grad_clip import check_grad_clip, clip_gradients, read_norms
from egl.train.loss_scale import LossScaler
from egl.train.lr_schedule import (LRSchedule, describe_schedulers, quiet_order_warning, resolve_schedulers,
                                  step_schedulers)
from egl.train.run_state import check_checkpoint_dir, resume_run, save_run, versions
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
            step used (an optimiser with several param groups: the first group's, and
            ``"<phase>/lr_<i>"`` for group ``i >= 1``); checkpoints keep the schedulers' state.
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
        check_checkpoint_dir(ckpt_dir)  # now, not at the first save checkpoint_every steps into the run
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
            start, prior_seconds = resume_run(Path(resume_from), recipe, opts, stream, device, scalers, validation,
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
                          "checkpoint_every": checkpoint_every, "versions": versions(), "time": time.time()}
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
                    rates = _rates(opts, scheds)  # the rates this step uses
                    with autocast():
                        logs = recipe.training_step(batch, step, opts, **step_kwargs)
                    logs.update(read_norms(norms))
                    if scheds:  # the rate of each phase that ran (ALIGN's masker: after its warm-up)
                        ran = {term.split("/")[0] for term in logs}
                        logs.update({f"{k}/{name}": v for (k, name), v in rates.items() if k in ran})
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
                        save_run(ckpt_path, recipe, opts, done, stream, device, scalers, validation, numerics,
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


def _rates(opts: dict[str, torch.optim.Optimizer], phases: Any) -> dict[tuple[str, str], float]:
    """``{(phase, "lr"): rate}`` of each scheduled phase's first param group, and ``"lr_<i>"`` for
    its other groups (a head trained at ten times the backbone's rate logs both)."""
    return {(k, "lr" if i == 0 else f"lr_{i}"): float(group["lr"])
            for k in phases for i, group in enumerate(opts[k].param_groups)}
