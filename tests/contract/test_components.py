"""Contract tests over every registered component (after timm's tests over ``list_models()``).

Registering a masker, alignment loss, regularizer, explainer or recipe enrols it here: the
parameter lists are built at collection time from ``egl.list_components``, and every check is
:mod:`egl.testing`'s, which plugin authors run over their own components. Checked per kind:
shape ``[B, 1, H, W]`` (or the loss shape), float32, device, finite values in range, module
form equal to the functional form where one exists, gradients where they should flow, errors
that name the argument, no hook left on the model; a recipe trains, resumes bit-exactly and has
a readable configuration.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _helpers import tiny_sam

import egl
from egl import testing

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
#: Checks that also run on the GPU when there is one (the others are device-independent logic).
ON_EVERY_DEVICE = {"output"}


def _kwargs(kind: str, name: str) -> dict[str, Any]:
    """Test-sized constructor arguments where a component needs them (SAM needs weights: a tiny
    random model stands in, its input declared as mean 0.5, std 0.2; ALIGN's classifier-only
    warm-up is cut to one step so its masker phase runs within the checks' three steps)."""
    if (kind, name) == ("masker", "sam"):
        return {"model": tiny_sam(), "input_mean": 0.5, "input_std": 0.2, "points_per_side": 2}
    if (kind, name) == ("recipe", "align"):
        return {"warmup_steps": 1}
    return {}


CASES = [pytest.param(kind, name, check, device, id=f"{kind}-{name}-{check}" + (f"-{device}" if device != "cpu"
                                                                                    else ""))
         for kind in egl.registry.KINDS for name in egl.list_components(kind) for check in testing.checks(kind)
         for device in (DEVICES if check in ON_EVERY_DEVICE else ["cpu"])]


@pytest.mark.parametrize(("kind", "name", "check", "device"), CASES)
def test_contract(kind: str, name: str, check: str, device: str) -> None:
    testing.check_component(kind, name, only=check, device=device, **_kwargs(kind, name))


def test_every_alignment_loss_declares_known_inputs() -> None:
    inputs = {n: getattr(egl.get_component("alignment", n), "inputs", None) for n in egl.list_components("alignment")}
    assert set(inputs.values()) <= set(testing.alignment.INPUTS), inputs
