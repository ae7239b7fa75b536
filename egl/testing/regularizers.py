"""Contract checks of a regularizer (:class:`egl.regularizers.Regularizer`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egl.errors import InputError
from egl.testing._common import REDUCTIONS, Subject, expect_close, expect_gradients, expect_loss, \
    functional_form, hook_count


def _explanation_setup(s: Subject, train: bool = False) -> tuple[nn.Module, object, Tensor, Tensor]:
    from egl.explainers import GradCAM

    model = s.model(train=train)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(s.device)
    return model, GradCAM(model), x, torch.tensor([0, 0, 3, 3], device=s.device)  # two same-class pairs


def output(s: Subject) -> None:
    """Each reduction gives a finite, non-negative float32 loss (``[B]`` for ``"none"``), equal to the
    functional form where there is one. An ``inputs = "explanation"`` regularizer, called as
    ``reg(explainer, x, target)``, leaves no hook and draws reproducibly under ``torch.manual_seed``."""
    for reduction in REDUCTIONS:
        reg = s.build(reduction=reduction)
        s.expect(getattr(reg, "inputs", None) in ("mask", "explanation"),
                 f"'inputs' is {getattr(reg, 'inputs', None)!r}, expected 'mask' or 'explanation'")
        if reg.inputs == "explanation":
            model, cam, x, target = _explanation_setup(s)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                out = reg(cam, x, target)
                expect_loss(s, out, 4, reduction, "reg(explainer, x, target)")
                s.expect(hook_count(model) == 0, "a hook was left on the model")
                torch.manual_seed(0)
                expect_close(s, reg(cam, x, target), out, "a second call under the same seed")
            continue
        m = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(s.device)
        out = reg(m)
        expect_loss(s, out, 3, reduction, "reg(mask)")
        fn = functional_form(type(reg))
        if fn is not None:
            expect_close(s, fn(m, reduction=reduction), out, f"{fn.__name__}() differs from the module")


def gradients(s: Subject) -> None:
    """Gradients reach the mask (or, for an explanation regularizer, every model parameter), finite and
    not all zero; the model stays in the mode it was in."""
    reg = s.build()
    if reg.inputs == "explanation":
        model, cam, x, target = _explanation_setup(s, train=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            reg(cam, x, target).backward()
        expect_gradients(s, [p.grad for p in model.parameters() if p.grad is not None], "the model's parameters")
        s.expect(model.training, "the model was left in eval mode")
        return
    m = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(s.device).requires_grad_(True)
    reg(m).backward()
    expect_gradients(s, [m.grad], "the mask")


def rejects_a_bad_reduction(s: Subject) -> None:
    """``reduction="avg"`` raises :class:`egl.InputError` naming ``'reduction'``."""
    with s.raises(InputError, "'reduction'", "building with reduction='avg'"):
        s.build(reduction="avg")


CHECKS = {"output": output, "gradients": gradients, "rejects_a_bad_reduction": rejects_a_bad_reduction}
