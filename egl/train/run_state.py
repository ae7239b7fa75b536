"""A fit's state: what its checkpoint holds, written at a step and loaded on resume, with the checks
that refuse a resume which would not continue the interrupted run (another recipe, optimizers,
schedule, weight average or model). Used by :func:`egl.train.fit`; the file format and the data
replay live in :mod:`egl.train.checkpoint`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from egl._check import describe, fail
from egl.train import distributed as dist_utils
from egl.train.checkpoint import (CHECKPOINT_NAME, FORMAT, DataStream, get_rng_state, load_checkpoint, os_reason,
                                  save_checkpoint, set_rng_state)
from egl.train.ema import WeightAverage
from egl.train.loss_scale import LossScaler
from egl.train.lr_schedule import check_resumed
from egl.train.validation import Validation

if TYPE_CHECKING:
    from egl.recipes.base import Recipe

__all__ = ["versions", "check_checkpoint_dir", "save_run", "resume_run"]

FN = "egl.train.fit"


def versions() -> dict[str, str]:
    import egl

    out = {"egl": str(egl.__version__), "torch": str(torch.__version__), "python": platform.python_version()}
    try:
        import timm

        out["timm"] = str(timm.__version__)
    except ImportError:  # pragma: no cover
        pass
    return out


def check_checkpoint_dir(path: Path) -> None:
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


def save_run(path: Path, recipe: "Recipe", opts: dict[str, torch.optim.Optimizer], step: int,
          stream: DataStream, device: torch.device, scalers: dict[str, LossScaler] | None,
          validation: Validation | None = None, numerics: dict[str, Any] | None = None,
          train_seconds: float = 0.0, schedulers: dict[str, Any] | None = None,
          average: WeightAverage | None = None) -> None:
    ranks = dist_utils.all_gather_object(_rank_state(stream, device))  # collective: every rank
    if dist_utils.rank() != 0:
        return
    state = {"format": FORMAT, "step": step, "train_seconds": train_seconds, "recipe_name": recipe.name,
             "recipe_class": f"{type(recipe).__module__}.{type(recipe).__qualname__}", "config": recipe.config(),
             "versions": versions(), "world_size": len(ranks), "recipe": recipe.state_dict(),
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


def resume_run(path: Path, recipe: "Recipe", opts: dict[str, torch.optim.Optimizer], stream: DataStream,
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
    _check_same_arguments(ckpt.get("config"), recipe, path)
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
    elif validation is not None and validation.select != "last" and int(ckpt["step"]) > 0:
        warnings.warn(f"{FN}: the checkpoint in {path.parent} was written without validation: "
                      f"select={validation.select!r} chooses "
                      f"among the measurements after step {int(ckpt['step'])} only.", stacklevel=3)
    ranks = ckpt["ranks"]
    if len(ranks) != dist_utils.world_size():
        warnings.warn(f"{FN}: resuming on {dist_utils.world_size()} ranks from a checkpoint written on {len(ranks)}: "
                      "the data order and random draws are not replayed exactly.", stacklevel=3)
    mine = ranks[dist_utils.rank() % len(ranks)]
    stream.load_state_dict(mine["data"])
    set_rng_state(mine["rng"], device, stream.generators)
    return int(ckpt["step"]), float(ckpt.get("train_seconds", 0.0))


#: A ``repr`` that names an object's address (``<function f at 0x7f...>``): another on every run.
_ADDRESS = re.compile(r"\bat 0x[0-9a-fA-F]+")


def _check_same_arguments(saved: object, recipe: "Recipe", path: Path) -> None:
    """The recipe's constructor arguments (:meth:`~egl.recipes.Recipe.config`) are the checkpoint's.

    An argument that differs refuses the resume (``align_weight=0.2`` resumed at 0.1 trained
    another method from the step it left off, and a changed ``lr`` was silently replaced by the
    optimizer state's). Values are compared as the config shows them (numbers by value: 100 and
    100.0 are one; an egl component given as an instance by its name and constructor arguments,
    so ``bce`` with another ``eps`` is seen, an argument a newer egl added warns; other objects
    by their description);
    values shown by an address (a function's ``repr``) are not compared. A component described
    by an egl older than its arguments' record (``"BCEAlignmentLoss(bce)"``) is taken as the
    same when the class and name agree, with a warning. Arguments in the recipe's ``resume_free`` (ALIGN's
    ``masker_checkpoint``) may differ, with a warning. An argument the checkpoint lacks (written
    by an older egl) or has and the recipe does not (a newer one) is named in a warning, with
    the value this run takes. Rank 0 decides and tells the others (a value shown differently on
    two ranks must not stop one of them only).
    """
    if not isinstance(saved, dict):  # (checkpoints of egl versions before the config was saved)
        return
    verdict: tuple[str, str] | None = None
    if dist_utils.rank() == 0:
        verdict = _argument_verdict(saved, recipe, path)
    verdict = dist_utils.broadcast_object(verdict)
    if verdict is None:
        return
    kind, text = verdict
    if kind == "error":
        was, got = text.split("\0")
        raise fail(FN, "resume", f"a recipe built with the arguments of the checkpoint in {path.parent}: {was}", got,
                   f"Build the recipe with {was} to continue the run, or train afresh: resume=False or another "
                   "checkpoint_dir (egl experiment: leave out --resume, or another --out); nothing was loaded")
    if dist_utils.rank() == 0:
        warnings.warn(text, stacklevel=4)


def _argument_verdict(saved: dict[str, Any], recipe: "Recipe", path: Path) -> tuple[str, str] | None:
    """``("error", "was\0got")``, ``("warn", message)`` or None (rank 0's comparison)."""
    mine = recipe.config()
    canon = lambda v: json.loads(json.dumps(v, sort_keys=True, default=str))  # noqa: E731  (tuples -> lists)
    text = lambda v: json.dumps(v, sort_keys=True, default=str)  # noqa: E731
    differ = sorted(k for k in set(saved) & set(mine)
                    if canon(saved[k]) != canon(mine[k]) and not _ADDRESS.search(text(saved[k]) + text(mine[k])))
    older = [k for k in differ if _older_description(saved[k], mine[k])]
    inner = {k: _component_changes(saved[k], mine[k]) for k in differ if k not in older}
    inner = {k: v for k, v in inner.items() if v is not None}
    added = [f"{k}: {n}" for k, (_, new, _) in inner.items() for n in new]
    dropped = [f"{k}: {n}" for k, (_, _, gone) in inner.items() for n in gone]
    differ = [k for k in differ if k not in older and not (k in inner and not inner[k][0])]
    strict = [k for k in differ if k not in recipe.resume_free]
    if strict:
        return ("error", ", ".join(f"{k}={saved[k]!r}" for k in strict) + "\0"
                + ", ".join(f"{k}={mine[k]!r}" for k in strict))
    notes = [f"{k} was {saved[k]!r}, is {mine[k]!r} (how a step is computed, not what: the run goes on)"
             for k in differ]
    notes += [f"{k} was described as {saved[k]!r} by an older egl, without its arguments: taken as {mine[k]!r}"
              for k in older]
    notes += [f"{a} is a new argument (the checkpoint predates it: the run continues with it)" for a in added]
    notes += [f"{d} is not an argument of this egl's component (dropped)" for d in dropped]
    notes += [f"{k}={mine[k]!r} is new (the checkpoint predates it: the run continues with it)"
              for k in sorted(set(mine) - set(saved))]
    notes += [f"{k}={saved[k]!r} is not an argument of this egl's recipe (dropped)"
              for k in sorted(set(saved) - set(mine))]
    if not notes:
        return None
    return ("warn", f"{FN}: resuming from the checkpoint in {path.parent}: " + "; ".join(notes) + ".")


def _older_description(was: object, now: object) -> bool:
    """``was`` is a component's description from before its arguments were recorded
    (``"BCEAlignmentLoss(bce)"``; an explainer's ``"GradCAM(model=ResNet)"``) and ``now`` the
    same component with its arguments (``{"name": "bce", "kwargs": {...}}``)."""
    if not (isinstance(was, str) and isinstance(now, dict) and isinstance(now.get("name"), str)):
        return False
    return re.fullmatch(rf"\w+\(({re.escape(now['name'])}|model=\w+)\)", was) is not None


def _component_changes(was: object, now: object) -> tuple[list[str], list[str], list[str]] | None:
    """For one component described both times by name and arguments (same name): the arguments that
    differ, those new in this egl and those it dropped; None for anything else."""
    if not (isinstance(was, dict) and isinstance(now, dict) and set(was) == set(now) == {"name", "kwargs"}
            and was["name"] == now["name"] and isinstance(was["kwargs"], dict) and isinstance(now["kwargs"], dict)):
        return None
    a, b = was["kwargs"], now["kwargs"]
    canon = lambda v: json.loads(json.dumps(v, sort_keys=True, default=str))  # noqa: E731
    changed = sorted(k for k in set(a) & set(b) if canon(a[k]) != canon(b[k]))
    return changed, sorted(set(b) - set(a)), sorted(set(a) - set(b))


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
