"""An exponential moving average of the classifier's weights, for :func:`egl.train.fit` (``ema=``).

Averaging the weights along the training trajectory is a strong, cheap baseline for
out-of-distribution accuracy (Arpit et al., "Ensemble of Averages", NeurIPS 2022; Izmailov et
al., SWA, 2018; Cha et al., SWAD, NeurIPS 2021); DomainBed and ALIGN do not use it (the default,
None). With ``ema=decay`` the average is updated after every step and is what ``fit`` leaves in
``recipe.model`` at the end; validation measures it (so ``select="acc"`` selects among averages).

Choices (the papers differ; these are egl's):

* Bias-corrected, as Adam's moments are: the average starts at zero and is divided by
  ``1 - decay**t`` after ``t`` updates, so it is the mean of the weights after each step,
  weighted ``decay**age`` and normalised; the random initial weights carry no weight (an
  average initialised with them, as timm's ``ModelEma`` is, keeps ``0.999**600 = 55 %`` of
  them after a 600-step run).
* The trainable parameters and the floating buffers of the classifier's ``state_dict`` are
  averaged, BatchNorm's running statistics included (as timm does; they are not recomputed for
  the averaged weights, as SWA's ``update_bn`` would); frozen parameters and integer buffers
  (``num_batches_tracked``) are left as the module holds them. The masker (ALIGN) is not
  averaged: it only shapes training.
* Accumulated in float32 at least (a bf16 average would round each small update away).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import fail

__all__ = ["WeightAverage", "check_ema"]


def check_ema(ema: object, fn: str, arg: str = "ema") -> float | None:
    """``ema``: None, or a decay in (0, 1) (a bool, NaN, 0 or 1 is refused)."""
    if ema is None:
        return None
    if isinstance(ema, bool) or not isinstance(ema, numbers.Real) or not (math.isfinite(ema) and 0 < ema < 1):
        raise fail(fn, arg, "None or a decay in (0, 1)", repr(ema)[:100],
                   f"Pass e.g. {arg}=0.999 (an average over about the last 1000 steps), or None")
    return float(ema)


class WeightAverage:
    """Bias-corrected exponential moving average of a module's ``state_dict``.

    Args:
        module: the module whose weights are averaged (``recipe.model``).
        decay: in (0, 1); the average spans about ``1 / (1 - decay)`` steps.

    Example:
        >>> import torch
        >>> m = torch.nn.Linear(2, 1)
        >>> avg = WeightAverage(m, decay=0.5)
        >>> for w in (1.0, 3.0):
        ...     with torch.no_grad():
        ...         _ = m.weight.fill_(w)
        ...     avg.update(m)
        >>> avg.average()["weight"]  # (0.5 * 1 + 1 * 3) / 1.5
        tensor([[2.3333, 2.3333]])
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = check_ema(decay, "egl.train.WeightAverage", "decay")
        if self.decay is None:
            raise fail("egl.train.WeightAverage", "decay", "a decay in (0, 1)", "None", "Pass e.g. decay=0.999")
        self.updates = 0
        frozen = {k for k, p in module.named_parameters() if not p.requires_grad}
        self.sums = {k: torch.zeros_like(v, dtype=torch.promote_types(v.dtype, torch.float32))
                     for k, v in module.state_dict().items() if v.is_floating_point() and k not in frozen}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the module's current weights in (after an optimiser step)."""
        state = module.state_dict()
        keys = list(self.sums)
        torch._foreach_mul_([self.sums[k] for k in keys], self.decay)
        torch._foreach_add_([self.sums[k] for k in keys], [state[k].detach().to(self.sums[k].dtype) for k in keys],
                            alpha=1.0 - self.decay)
        self.updates += 1

    def average(self) -> dict[str, Tensor]:
        """The averaged tensors of the ``state_dict`` (in the sums' float32-at-least dtype; the
        module's own dtype on loading). Before any update: empty (nothing to average)."""
        if self.updates == 0:
            return {}
        norm = 1.0 - self.decay ** self.updates
        return {k: v / norm for k, v in self.sums.items()}

    @torch.no_grad()
    def apply(self, module: nn.Module) -> None:
        """Load the average into ``module`` (no-op before any update); only the averaged
        tensors are written (frozen parameters and integer buffers are not touched)."""
        state = module.state_dict()
        for k, v in self.average().items():
            state[k].copy_(v)

    @contextlib.contextmanager
    def swapped(self, module: nn.Module) -> Iterator[None]:
        """Within the block ``module`` holds the average; its own weights come back on exit."""
        if self.updates == 0:
            yield
            return
        state = module.state_dict()
        own = {k: state[k].detach().clone() for k in self.sums}
        self.apply(module)
        try:
            yield
        finally:
            with torch.no_grad():
                for k, v in own.items():
                    state[k].copy_(v)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "sums": self.sums}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if float(state["decay"]) != self.decay or set(state["sums"]) != set(self.sums):
            raise fail("egl.train.WeightAverage", "state", f"an average with decay {self.decay} of the same "
                       f"tensors ({len(self.sums)})", f"decay {state['decay']}, {len(state['sums'])} tensors",
                       "Load the state of an average built with the same decay on the same model")
        self.updates = int(state["updates"])
        for k, v in state["sums"].items():
            self.sums[k].copy_(v)
