"""``fit``: drive a recipe for a number of steps, logging every named loss term.

Kept small on purpose: seeds, a tqdm progress bar that can be turned off, and one JSON
line per step. Checkpoint/resume, TensorBoard and distributed training are planned
(see the recipes issue) and not here yet.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from egl._check import fail

if TYPE_CHECKING:
    from egl.recipes.base import Recipe

__all__ = ["fit", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (when installed) and torch (CPU and CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise fail("egl.train.fit", "loader", "a loader that yields batches", "an empty loader",
                       "Check the dataset and batch size (drop_last with fewer samples than a batch?)")


def _versions() -> dict[str, str]:
    import egl

    out = {"egl": egl.__version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def fit(recipe: "Recipe", loader: Iterable[Any], steps: int, *, seed: int | None = None,
        optimizers: dict[str, torch.optim.Optimizer] | None = None, log_path: str | os.PathLike[str] | None = None,
        progress: bool = True, device: torch.device | str | None = None) -> list[dict[str, float]]:
    """Train ``recipe`` for ``steps`` steps, cycling over ``loader``.

    Args:
        recipe: any :class:`egl.recipes.Recipe`.
        loader: yields batches (``(x, y)``, ``(x, y, domain)`` or dicts).
        steps: number of optimisation steps (each runs every active phase once).
        seed: seeds Python, NumPy and torch first (same machine, same seed: same run).
        optimizers: one per phase name; default ``recipe.configure_optimizers()``.
        log_path: JSONL file: a header line (versions, config) then one line per step.
        progress: show a tqdm progress bar.
        device: move batches there (default: the device of the recipe's parameters).

    Returns:
        The per-step logs (``{"step": i, "<phase>/<term>": value, ...}``).
    """
    from egl.recipes.batch import as_batch

    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise fail("egl.train.fit", "steps", "an int >= 0", repr(steps), "Pass the number of steps to train")
    if seed is not None:
        seed_everything(seed)
    opts = optimizers if optimizers is not None else recipe.configure_optimizers()
    if device is None:
        p = next(recipe.parameters(), None)
        device = p.device if p is not None else "cpu"
    recipe.train()
    history: list[dict[str, float]] = []
    log = open(log_path, "a", encoding="utf-8") if log_path is not None else None
    bar = None
    try:
        if log is not None:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
            header = {"event": "start", "recipe": recipe.name, "steps": steps, "seed": seed,
                      "config": repr(recipe), "versions": _versions(), "time": time.time()}
            log.write(json.dumps(header) + "\n")
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, desc=recipe.name or "train", leave=False)
        batches = _cycle(loader)
        for step in range(steps):
            batch = as_batch(next(batches), "egl.train.fit").to(device)
            logs = recipe.training_step(batch, step, opts)
            row = {"step": step, **logs}
            history.append(row)
            if log is not None:
                log.write(json.dumps(row) + "\n")
                log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in logs.items() if k.endswith("total")})
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return history
