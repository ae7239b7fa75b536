"""Contract checks of an alignment loss (:class:`egl.losses.AlignmentLoss`), by what it is called
with (``inputs``): a saliency map and a mask, every class's signed maps and a mask, or the model,
the images and a mask."""

from __future__ import annotations

import torch
from torch import Tensor

from egl.errors import InputError
from egl.testing._common import REDUCTIONS, Subject, expect_close, expect_gradients, expect_loss, \
    functional_form

INPUTS = ("saliency", "class_maps", "batch")


def _saliency_inputs(device: str) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 1, 8, 8, generator=g).to(device).requires_grad_(True)
    mask = (torch.rand(3, 16, 16, generator=g) > 0.5).to(device)  # bool, [B, H, W], another resolution
    return s, mask


def _call(s: Subject, reduction: str = "mean") -> tuple[Tensor, list[Tensor], int, object, tuple[Tensor, ...]]:
    """Build with ``reduction`` and call on inputs of the loss's kind: (loss, what gradients should
    reach, batch size, the loss module, the arguments)."""
    loss = s.build(reduction=reduction)
    inputs = getattr(loss, "inputs", None)
    s.expect(inputs in INPUTS, f"'inputs' is {inputs!r}, expected one of {list(INPUTS)}")
    g = torch.Generator().manual_seed(0)
    if inputs == "saliency":
        args: tuple[Tensor, ...] = _saliency_inputs(s.device)
        leaves = [args[0]]
    elif inputs == "class_maps":
        maps = torch.randn(3, 5, 4, 4, generator=g).to(s.device).requires_grad_(True)  # signed, 5 classes
        args = (maps, (torch.rand(3, 1, 16, 16, generator=g) > 0.5).to(s.device))
        leaves = [maps]
    else:
        model = s.model(train=True)
        args = (model, torch.randn(3, 3, 32, 32, generator=g).to(s.device),  # type: ignore[assignment]
                (torch.rand(3, 1, 32, 32, generator=g) > 0.5).to(s.device))
        leaves = list(model.parameters())
    return loss(*args), leaves, 3, loss, args


def output(s: Subject) -> None:
    """Each reduction gives a finite, non-negative float32 loss (``[B]`` for ``"none"``) on the
    input's device, equal to the functional form where there is one."""
    for reduction in REDUCTIONS:
        out, _, b, loss, args = _call(s, reduction)
        expect_loss(s, out, b, reduction, f"the loss ({loss.inputs} inputs)")  # type: ignore[attr-defined]
        fn = functional_form(type(loss))
        if fn is not None:
            expect_close(s, fn(*args, reduction=reduction), out, f"{fn.__name__}() differs from the module")


def gradients(s: Subject) -> None:
    """The loss's gradient reaches what it aligns (the map, the class maps, or the model's
    parameters), finite and not all zero."""
    out, leaves, _, loss, _ = _call(s)
    out.sum().backward()
    inputs = getattr(loss, "inputs", None)
    grads = [p.grad for p in leaves]
    if inputs == "batch":  # a model's parameters: those the loss reaches (a frozen stem gets none)
        grads = [g for g in grads if g is not None]
    expect_gradients(s, grads, {"saliency": "the saliency map", "class_maps": "the class maps"}.get(
        str(inputs), "the model's parameters"))

def rejects_bad_inputs(s: Subject) -> None:
    """A bad ``reduction`` names ``'reduction'``; a saliency loss also names a map outside [0, 1]
    (``'saliency'``), a signed mask and batch sizes that differ, with :class:`egl.InputError`."""
    with s.raises(InputError, "'reduction'", "building with reduction='avg'"):
        s.build(reduction="avg")
    loss = s.build()
    if getattr(loss, "inputs", None) != "saliency":
        return
    sal, mask = _saliency_inputs(s.device)
    with s.raises(InputError, "'saliency'", "a map with values above 1"):
        loss(sal.detach() * 2 + 0.5, mask)
    with s.raises(InputError, r"got values in \[-1, 1\]", "a mask with values in [-1, 1]"):
        loss(sal, mask.float() * 2 - 1)
    with s.raises(InputError, "same batch size", "a mask of another batch size"):
        loss(sal, mask[:2])


CHECKS = {"output": output, "gradients": gradients, "rejects_bad_inputs": rejects_bad_inputs}
