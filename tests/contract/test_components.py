"""Contract tests over every registered component (after timm's tests over ``list_models()``).

Registering a masker, alignment loss, regularizer or explainer enrols it here: the
parameter lists are built at collection time from ``egl.list_components``. Checked per
kind: shape ``[B, 1, H, W]`` (or the loss shape), float32, device, finite values in
range, module form equal to the functional form where one exists, gradients where they
should flow, and no hook left on the model.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from _helpers import NUM_CLASSES, create_component, make_model
from torch import nn

import egl
from egl.explainers import GradCAM

MASKERS = egl.list_components("masker")
ALIGNMENT_ALL = egl.list_components("alignment")
ALIGNMENT = [n for n in ALIGNMENT_ALL if getattr(egl.get_component("alignment", n), "inputs", "saliency") == "saliency"]
CLASS_MAP_LOSSES = [n for n in ALIGNMENT_ALL if egl.get_component("alignment", n).inputs == "class_maps"]
BATCH_LOSSES = [n for n in ALIGNMENT_ALL if egl.get_component("alignment", n).inputs == "batch"]
REGULARIZERS = egl.list_components("regularizer")
EXPLAINERS = egl.list_components("explainer")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
REDUCTIONS = ("mean", "sum", "none")


def functional_form(cls: type) -> Callable[..., Any] | None:
    """The function next to a component class: same stem as its registry name (``bce`` -> ``bce_alignment``)."""
    mod = sys.modules[cls.__module__]
    names = [n for n in getattr(mod, "__all__", dir(mod)) if inspect.isfunction(getattr(mod, n, None))]
    for n in sorted(names, key=lambda n: (n != cls.name, n)):
        if n == cls.name or n.startswith(f"{cls.name}_"):
            return getattr(mod, n)
    return None


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def hook_count(model: nn.Module) -> int:
    """Hooks on any submodule, plus global module hooks."""
    n = sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)
    g = nn.modules.module
    for d in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
              "_global_backward_pre_hooks"):
        n += len(getattr(g, d, {}))
    return n


def _check_map(out: torch.Tensor, b: int, hw: tuple[int, int], device: str) -> None:
    assert isinstance(out, torch.Tensor)
    assert out.shape == (b, 1, *hw)
    assert out.dtype == torch.float32
    assert out.device.type == device
    assert torch.isfinite(out).all()
    assert 0.0 <= float(out.detach().min()) and float(out.detach().max()) <= 1.0


def _check_loss(out: torch.Tensor, b: int, reduction: str, device: str) -> None:
    assert out.shape == ((b,) if reduction == "none" else ())
    assert out.dtype == torch.float32
    assert out.device.type == device
    assert torch.isfinite(out).all()
    assert float(out.detach().min()) >= 0.0


# -- registry ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "name"), [("masker", n) for n in MASKERS] + [("alignment", n) for n in ALIGNMENT]
                         + [("regularizer", n) for n in REGULARIZERS] + [("explainer", n) for n in EXPLAINERS])
def test_registered_name_matches_class(kind: str, name: str) -> None:
    cls = egl.get_component(kind, name)
    assert getattr(cls, "name", None) == name
    assert cls.__doc__, f"{kind} {name!r} has no docstring"


# -- maskers -----------------------------------------------------------------------------------
def _masker_inputs(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 16, 12, generator=g)
    mask = torch.rand(2, 1, 8, 6, generator=g)
    return x.to(device), mask.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", MASKERS)
def test_masker_output(name: str, device: str) -> None:
    torch.manual_seed(0)
    masker = create_component("masker", name).to(device)
    assert isinstance(masker, nn.Module)
    x, mask = _masker_inputs(device)
    out = masker(x, mask if masker.needs_mask else None)
    _check_map(out, 2, (16, 12), device)
    if masker.needs_mask:
        with pytest.raises(egl.InputError, match="'mask'"):
            masker(x)
    else:  # a mask that comes along is not needed, and does no harm
        _check_map(masker(x, mask), 2, (16, 12), device)


@pytest.mark.parametrize("name", MASKERS)
def test_masker_gradients(name: str) -> None:
    torch.manual_seed(0)
    masker = create_component("masker", name)
    x, mask = _masker_inputs("cpu")
    params = [p for p in masker.parameters() if p.requires_grad]
    if not masker.trainable:
        assert not params, "a masker with trainable=False has trainable parameters"
        return
    assert params
    out = masker(x, mask if masker.needs_mask else None)
    (out * torch.rand_like(out)).sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()
    assert sum(float(p.grad.abs().sum()) for p in params) > 0


@pytest.mark.parametrize("name", MASKERS)
def test_masker_rejects_a_non_image(name: str) -> None:
    masker = create_component("masker", name)
    with pytest.raises(egl.InputError, match="'x' expected a 4-D tensor"):
        masker(torch.randn(3, 16, 16), torch.rand(3, 16, 16))


# -- alignment losses ------------------------------------------------------------------------------
def _alignment_inputs(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    s = torch.rand(3, 1, 8, 8, generator=g).to(device).requires_grad_(True)
    mask = (torch.rand(3, 16, 16, generator=g) > 0.5).to(device)  # bool, [B, H, W], other resolution
    return s, mask


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ALIGNMENT)
def test_alignment_output_and_functional_form(name: str, reduction: str, device: str) -> None:
    loss = egl.create("alignment", name, reduction=reduction)
    assert isinstance(loss, nn.Module)
    s, mask = _alignment_inputs(device)
    out = loss(s, mask)
    _check_loss(out, 3, reduction, device)
    fn = functional_form(type(loss))
    if fn is not None:
        torch.testing.assert_close(fn(s, mask, reduction=reduction), out)


@pytest.mark.parametrize("name", ALIGNMENT)
def test_alignment_gradient_into_saliency(name: str) -> None:
    s, mask = _alignment_inputs("cpu")
    egl.create("alignment", name)(s, mask).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and float(s.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", ALIGNMENT)
def test_alignment_rejects_bad_inputs(name: str) -> None:
    loss = egl.create("alignment", name)
    s, mask = _alignment_inputs("cpu")
    with pytest.raises(egl.InputError, match="'saliency'"):
        loss(s.detach() * 2 + 0.5, mask)
    with pytest.raises(egl.InputError, match=r"got values in \[-1, 1\]"):
        loss(s, mask.float() * 2 - 1)
    with pytest.raises(egl.InputError, match="same batch size"):
        loss(s, mask[:2])
    with pytest.raises(egl.InputError, match="'reduction'"):
        egl.create("alignment", name, reduction="avg")


def test_every_alignment_loss_declares_known_inputs() -> None:
    assert set(ALIGNMENT) | set(CLASS_MAP_LOSSES) | set(BATCH_LOSSES) == set(ALIGNMENT_ALL)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", CLASS_MAP_LOSSES)
def test_class_map_loss_output_gradient_and_functional_form(name: str, reduction: str) -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 5, 4, 4, generator=g).requires_grad_(True)  # signed maps of 5 classes
    mask = torch.rand(3, 1, 16, 16, generator=g) > 0.5
    loss = egl.create("alignment", name, reduction=reduction)
    out = loss(maps, mask)
    _check_loss(out, 3, reduction, "cpu")
    fn = functional_form(type(loss))
    if fn is not None:
        torch.testing.assert_close(fn(maps, mask, reduction=reduction), out)
    out.sum().backward()
    assert maps.grad is not None and torch.isfinite(maps.grad).all() and float(maps.grad.abs().sum()) > 0


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", BATCH_LOSSES)
def test_batch_loss_output_and_gradient_into_parameters(name: str, reduction: str) -> None:
    model = make_model("test_resnet")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=g)
    mask = torch.rand(3, 1, 32, 32, generator=g) > 0.5
    loss = egl.create("alignment", name, reduction=reduction)
    out = loss(model, x, mask)
    _check_loss(out, 3, reduction, "cpu")
    fn = functional_form(type(loss))
    if fn is not None:
        torch.testing.assert_close(fn(model, x, mask, reduction=reduction), out)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0


# -- regularizers -----------------------------------------------------------------------------------
def _explanation_setup(device: str, train: bool = False) -> tuple[nn.Module, GradCAM, torch.Tensor, torch.Tensor]:
    model = make_model("test_resnet", eval_mode=not train).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 64, 64, generator=g).to(device)
    target = torch.tensor([0, 0, 3, 3], device=device)
    return model, GradCAM(model), x, target


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularizer_output_and_functional_form(name: str, reduction: str, device: str) -> None:
    reg = egl.create("regularizer", name, reduction=reduction)
    assert isinstance(reg, nn.Module)
    assert reg.inputs in ("mask", "explanation")
    if reg.inputs == "explanation":
        model, cam, x, target = _explanation_setup(device)
        torch.manual_seed(0)
        out = reg(cam, x, target)
        _check_loss(out, 4, reduction, device)
        assert hook_count(model) == 0
        torch.manual_seed(0)
        torch.testing.assert_close(reg(cam, x, target), out)  # seeded draws: reproducible
        return  # its functional form takes precomputed explanations: see its unit tests
    m = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)
    out = reg(m)
    _check_loss(out, 3, reduction, device)
    fn = functional_form(type(reg))
    if fn is not None:
        torch.testing.assert_close(fn(m, reduction=reduction), out)


@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularizer_gradients(name: str) -> None:
    reg = egl.create("regularizer", name)
    if reg.inputs == "explanation":
        model, cam, x, target = _explanation_setup("cpu", train=True)
        torch.manual_seed(0)
        reg(cam, x, target).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
        assert model.training
        return
    m = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    reg(m).backward()
    assert m.grad is not None and torch.isfinite(m.grad).all() and float(m.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularizer_rejects_bad_reduction(name: str) -> None:
    with pytest.raises(egl.InputError, match="'reduction'"):
        egl.create("regularizer", name, reduction="avg")


# -- explainers --------------------------------------------------------------------------------------
def _explainer_setup(name: str, device: str = "cpu", train: bool = False) -> tuple[nn.Module, Any, torch.Tensor]:
    model = make_model("test_resnet", eval_mode=not train).to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=g).to(device)
    return model, egl.create("explainer", name, model), x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainer_output(name: str, device: str) -> None:
    model, explainer, x = _explainer_setup(name, device)
    sal = explainer(x, [0, 3])
    _check_map(sal, 2, (64, 64), device)
    assert not sal.requires_grad  # detached unless create_graph=True
    assert all(p.grad is None for p in model.parameters())  # no gradients left on the model
    expl = explainer.explain(x, [0, 3])
    torch.testing.assert_close(expl.saliency, sal)
    with torch.no_grad():
        torch.testing.assert_close(expl.logits, model(x), atol=1e-5, rtol=1e-4)
    assert hook_count(model) == 0
    assert not model.training


@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainer_functional_form_and_default_target(name: str) -> None:
    model, explainer, x = _explainer_setup(name)
    sal = explainer(x, [1, 2])
    fn = functional_form(type(explainer))
    if fn is not None:
        torch.testing.assert_close(fn(model, x, [1, 2]), sal)
    with torch.no_grad():
        pred = model(x).argmax(1)
    torch.testing.assert_close(explainer(x), explainer(x, pred))  # target=None: the predicted class
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainer_create_graph(name: str) -> None:
    model, explainer, x = _explainer_setup(name, train=True)
    if not type(explainer).differentiable:
        with pytest.raises(egl.InputError, match="'create_graph'"):
            explainer(x, [0, 3], create_graph=True)
        assert hook_count(model) == 0
        return
    sal = explainer(x, [0, 3], create_graph=True)
    _check_map(sal, 2, (64, 64), "cpu")
    assert sal.requires_grad
    weight = torch.rand(sal.shape, generator=torch.Generator().manual_seed(1))
    (sal * weight).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no gradient reached the model's parameters"
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    assert model.training  # never switched to eval behind the user's back
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainer_leaves_no_hook_on_error(name: str) -> None:
    model, explainer, x = _explainer_setup(name)
    with pytest.raises(egl.InputError, match="'target'"):
        explainer(x, [0, NUM_CLASSES])
    assert hook_count(model) == 0
    with pytest.raises(egl.InputError, match="'x'"):
        explainer(x[0])
    assert hook_count(model) == 0


@pytest.mark.parametrize("name", EXPLAINERS)
def test_explainer_batch_of_one_equals_row_of_batch(name: str) -> None:
    _, explainer, x = _explainer_setup(name)
    full = explainer(x, [0, 3])
    torch.testing.assert_close(explainer(x[1:], [3]), full[1:], atol=1e-4, rtol=1e-4)
