"""Contract checks of an explainer (:class:`egl.explainers.Explainer`), on a tiny timm ResNet."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egl.errors import InputError
from egl.testing._common import NUM_CLASSES, Subject, expect_close, expect_gradients, expect_map, \
    functional_form, hook_count


def _setup(s: Subject, train: bool = False) -> tuple[nn.Module, object, Tensor]:
    model = s.model(train=train)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)).to(s.device)
    return model, s.build(model), x


def output(s: Subject) -> None:
    """``explainer(x, target)`` is a detached ``[B, 1, H, W]`` float32 map in [0, 1] at the input's
    size; ``explain()`` gives the same map and the model's logits. No gradient, hook or mode change
    is left on the model."""
    model, explainer, x = _setup(s)
    sal = explainer(x, [0, 3])  # type: ignore[operator]
    expect_map(s, sal, 2, (64, 64), "explainer(x, target)")
    s.expect(not sal.requires_grad, "the map requires grad without create_graph=True (detach it)")
    s.expect(all(p.grad is None for p in model.parameters()), "gradients were left in the model's .grad")
    expl = explainer.explain(x, [0, 3])  # type: ignore[attr-defined]
    expect_close(s, expl.saliency, sal, "explain().saliency differs from explainer(x, target)")
    with torch.no_grad():
        expect_close(s, expl.logits, model(x), "explain().logits differ from the model's", atol=1e-5, rtol=1e-4)
    s.expect(hook_count(model) == 0, "a hook was left on the model")
    s.expect(not model.training, "the model was left in train mode")


def default_target(s: Subject) -> None:
    """``target=None`` explains the predicted class; the functional form (same stem as the name, as
    ``grad_cam`` beside ``GradCAM``), where there is one, gives the same maps."""
    model, explainer, x = _setup(s)
    sal = explainer(x, [1, 2])  # type: ignore[operator]
    fn = functional_form(type(explainer))
    if fn is not None:
        expect_close(s, fn(model, x, [1, 2]), sal, f"{fn.__name__}() differs from the explainer")
    with torch.no_grad():
        pred = model(x).argmax(1)
    default, given = explainer(x), explainer(x, pred)  # type: ignore[operator]
    expect_close(s, default, given, "target=None differs from the predicted class")
    s.expect(hook_count(model) == 0, "a hook was left on the model")


def create_graph(s: Subject) -> None:
    """With ``create_graph=True`` the map is differentiable: gradients reach the model's parameters,
    finite and not all zero, and the model stays in train mode. An explainer with
    ``differentiable = False`` refuses it, naming ``'create_graph'``."""
    model, explainer, x = _setup(s, train=True)
    if not getattr(type(explainer), "differentiable", True):
        with s.raises(InputError, "'create_graph'", "create_graph=True on a non-differentiable explainer"):
            explainer(x, [0, 3], create_graph=True)  # type: ignore[operator]
        s.expect(hook_count(model) == 0, "a hook was left on the model after the error")
        return
    sal = explainer(x, [0, 3], create_graph=True)  # type: ignore[operator]
    expect_map(s, sal, 2, (64, 64), "explainer(x, target, create_graph=True)")
    s.expect(sal.requires_grad, "the map does not require grad under create_graph=True")
    weight = torch.rand(sal.shape, generator=torch.Generator().manual_seed(1)).to(sal.device)
    (sal * weight).sum().backward()
    expect_gradients(s, [p.grad for p in model.parameters() if p.grad is not None], "the model's parameters")
    s.expect(model.training, "the model was switched to eval mode (and left so)")
    s.expect(hook_count(model) == 0, "a hook was left on the model")


def rejects_bad_inputs(s: Subject) -> None:
    """A target out of range names ``'target'``, a 3-D input names ``'x'`` (:class:`egl.InputError`),
    and no hook is left behind by either."""
    model, explainer, x = _setup(s)
    with s.raises(InputError, "'target'", f"target {NUM_CLASSES} for a {NUM_CLASSES}-class model"):
        explainer(x, [0, NUM_CLASSES])  # type: ignore[operator]
    s.expect(hook_count(model) == 0, "a hook was left on the model after a bad target")
    with s.raises(InputError, "'x'", "a 3-D x"):
        explainer(x[0])  # type: ignore[operator]
    s.expect(hook_count(model) == 0, "a hook was left on the model after a bad x")


def batch_of_one(s: Subject) -> None:
    """An image's map does not depend on the rest of the batch (a batch of one gives its row)."""
    _, explainer, x = _setup(s)
    full = explainer(x, [0, 3])  # type: ignore[operator]
    for i, target in enumerate((0, 3)):
        one = explainer(x[i:i + 1], [target])  # type: ignore[operator]
        expect_close(s, one, full[i:i + 1], f"a batch of one differs from its row ({i}) of the batch",
                     atol=1e-4, rtol=1e-4)


CHECKS = {"output": output, "default_target": default_target, "create_graph": create_graph,
          "rejects_bad_inputs": rejects_bad_inputs, "batch_of_one": batch_of_one}
