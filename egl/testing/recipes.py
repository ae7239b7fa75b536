"""Contract checks of a recipe (:class:`egl.recipes.Recipe`): three steps on a tiny timm ResNet with
masks and two domains, a bit-exact resume, and a readable configuration."""

from __future__ import annotations

import contextlib
import json
import math
import random
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from egl.testing._common import Subject, hook_count

STEPS = 3


@contextlib.contextmanager
def _own_rng() -> Iterator[None]:
    """``fit(seed=...)`` seeds Python, NumPy and torch: give them back as they were."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _batches(device: str) -> list[dict[str, Tensor]]:
    """Two batches of four 64-px images (two classes in each of two domains) with a centre mask."""
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(4, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    return [{"image": torch.randn(4, 3, 64, 64, generator=g).to(device), "label": torch.tensor([0, 1, 0, 1]),
             "domain": torch.tensor([0, 0, 1, 1]), "mask": mask.to(device)} for _ in range(2)]


def _recipe(s: Subject) -> Any:
    from egl.recipes import Recipe

    with torch.random.fork_rng(devices=[]):  # a recipe that builds modules (ALIGN's masker) draws
        torch.manual_seed(0)
        recipe = s.build(s.model(train=True))
    s.expect(isinstance(recipe, Recipe), f"built a {type(recipe).__name__}, not an egl.recipes.Recipe")
    return recipe


def _fit(s: Subject, steps: int, **kwargs: Any) -> tuple[Any, list[dict[str, float]]]:
    recipe = _recipe(s)
    with _own_rng():
        logs = recipe.fit(_batches(s.device), steps, seed=0, progress=False, **kwargs)
    return recipe, logs


def trains(s: Subject) -> None:
    """Three steps log one row per step, finite, with ``<phase>/total`` for each active phase;
    every phase that was active changed its parameters; no hook is left and the model's mode is kept."""
    recipe = _recipe(s)
    before = {n: p.detach().clone() for n, p in recipe.named_parameters()}
    names = {id(p): n for n, p in recipe.named_parameters()}
    with _own_rng():
        logs = recipe.fit(_batches(s.device), STEPS, seed=0, progress=False)
    s.expect([row.get("step") for row in logs] == list(range(STEPS)),
             f"the log's steps are {[row.get('step') for row in logs]}, expected {list(range(STEPS))}")
    ran: set[str] = set()
    for row in logs:
        step = int(row["step"])
        bad = [k for k, v in row.items() if not (isinstance(v, (int, float)) and math.isfinite(v))]
        s.expect(not bad, f"step {step} logged non-finite or non-number values for {bad}")
        for phase in recipe.active_phases(step):
            ran.add(phase.name)
            s.expect(f"{phase.name}/total" in row, f"step {step} has no '{phase.name}/total' (the phase's loss)")
    s.expect(ran, f"no phase was active in the first {STEPS} steps: pass arguments that start them sooner "
                  f"(e.g. warmup_steps=1)")
    for phase in recipe.phases():
        if phase.name in ran:
            moved = [names.get(id(p)) for p in phase.parameters()
                     if id(p) in names and not torch.equal(before[names[id(p)]], p.detach())]
            s.expect(moved, f"phase '{phase.name}' ran but changed none of its parameters")
    s.expect(hook_count(recipe) == 0, "a hook was left on the recipe's modules")
    s.expect(recipe.model.training, "the model was left in eval mode after fit (fit restores modes)")


def resumes_exactly(s: Subject) -> None:
    """Two steps, a checkpoint, and a resume to three give the same log rows and state, bit for bit,
    as three steps in one go (:func:`egl.train.fit`'s ``resume=True``)."""
    whole, logs = _fit(s, STEPS)
    with tempfile.TemporaryDirectory() as tmp:
        _, head = _fit(s, STEPS - 1, checkpoint_dir=tmp, checkpoint_every=1)
        resumed, tail = _fit(s, STEPS, checkpoint_dir=tmp, resume=True)
    s.expect(head + tail == logs, "the resumed run logged other values than the uninterrupted run: "
                                  "save what a step changes in state_dict() (buffers, counters, RNG draws)")
    a, b = whole.state_dict(), resumed.state_dict()
    s.expect(a.keys() == b.keys(), f"state_dict keys differ after a resume: {sorted(a.keys() ^ b.keys())[:5]}")
    differ = [k for k in a if isinstance(a[k], Tensor) and not torch.equal(a[k], b[k])]
    s.expect(not differ, f"after a resume these differ from the uninterrupted run: {differ[:5]}")


def config(s: Subject) -> None:
    """``config()`` is a JSON-serialisable dict, equal for two recipes built alike; ``compares_domains``
    and ``reads_masks`` are bools."""
    a, b = _recipe(s), _recipe(s)
    cfg = a.config()
    s.expect(isinstance(cfg, dict), f"config() returned {type(cfg).__name__}, expected a dict")
    try:
        json.dumps(cfg)
    except (TypeError, ValueError) as e:
        s.expect(False, f"config() is not JSON-serialisable ({e}); fit writes it in the log's header")
    s.expect(json.dumps(cfg, sort_keys=True) == json.dumps(b.config(), sort_keys=True),
             "two recipes built with the same arguments have different config()")
    for attr in ("compares_domains", "reads_masks"):
        s.expect(isinstance(getattr(a, attr), bool), f"'{attr}' is {getattr(a, attr)!r}, expected a bool")


CHECKS = {"trains": trains, "resumes_exactly": resumes_exactly, "config": config}
