"""The explainer contract, checked on return of every subclass's ``explain``: an ``Explanation`` of a
``[B, 1, H, W]`` saliency and ``[B, num_classes]`` logits, both differentiable when ``create_graph=True``
was asked. A plugin that breaks it is named where it is called (``egl.create(...)(x, y)``, ALIGN's
classifier phase), not deep inside a recipe."""

from __future__ import annotations

import inspect
import types
from typing import Any

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.explainers import Explainer, Explanation


def _input_gradient(model: torch.nn.Module, x: torch.Tensor, target: Any, create_graph: bool) -> Explanation:
    """``|d s_y / d x|`` summed over channels, as docs/plugins.md's contract section writes it."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(leaf)
        t = logits.detach().argmax(1) if target is None else torch.as_tensor(target, device=x.device).expand(x.shape[0])
        (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), leaf, create_graph=create_graph)
    with torch.set_grad_enabled(create_graph):
        sal = g.abs().sum(1, keepdim=True)
        sal = sal / sal.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    if not create_graph:
        sal, logits = sal.detach(), logits.detach()
    return Explanation(sal, logits)


class GoodPlugin(Explainer):
    name = "contract_good"

    def explain(self, x, target=None, *, create_graph=False):
        x = self._check_input(x, create_graph)
        return _input_gradient(self.model, x, target, create_graph)


class TensorPlugin(Explainer):  # returns the map alone
    name = "contract_tensor"

    def explain(self, x, target=None, *, create_graph=False):
        return _input_gradient(self.model, x, target, create_graph).saliency


class FlatPlugin(Explainer):  # returns a [B, H, W] map
    name = "contract_flat"

    def explain(self, x, target=None, *, create_graph=False):
        out = _input_gradient(self.model, x, target, create_graph)
        return Explanation(out.saliency[:, 0], out.logits)


class OneMapPlugin(Explainer):  # one map for the whole batch
    name = "contract_one_map"

    def explain(self, x, target=None, *, create_graph=False):
        out = _input_gradient(self.model, x, target, create_graph)
        return Explanation(out.saliency[:1], out.logits)


class NoGraphPlugin(Explainer):  # an Explanation, but create_graph is ignored
    name = "contract_no_graph"

    def explain(self, x, target=None, *, create_graph=False):
        out = _input_gradient(self.model, x, target, False)
        return Explanation(out.saliency, self.model(x))  # logits with grad, the map without


class DetachedLogitsPlugin(Explainer):
    name = "contract_detached_logits"

    def explain(self, x, target=None, *, create_graph=False):
        out = _input_gradient(self.model, x, target, create_graph)
        return Explanation(out.saliency, out.logits.detach())


PLUGINS = [GoodPlugin, TensorPlugin, FlatPlugin, OneMapPlugin, NoGraphPlugin, DetachedLogitsPlugin]


@pytest.fixture(autouse=True)
def registered() -> None:
    """The plugins above, registered at run time (tests/conftest.py resets the plugins after each test)."""
    mod = types.ModuleType("contract_plugins")
    mod.egl_register_explainers = egl.hookimpl(lambda: list(PLUGINS))  # type: ignore[attr-defined]
    egl.register_plugin(mod, name="contract_plugins")


@pytest.fixture
def model() -> torch.nn.Module:
    return make_model("test_resnet", eval_mode=False)


def _batch(n: int = 4, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 3


def test_a_plugin_returning_a_tensor_is_named(model: torch.nn.Module) -> None:
    x, y = _batch()
    with pytest.raises(egl.InputError, match=r"^\S*test_plugin_contract\.TensorPlugin\.explain: 'return value' "
                                             r"expected an egl\.explainers\.Explanation\(saliency=\[B, 1, H, W\] in "
                                             r"\[0, 1\], logits=\[B, num_classes\]\), got a torch\.float32 tensor "
                                             r"of shape \[4, 1, 64, 64\] on cpu\. Return egl\.explainers\.Explanation"
                                             r"\(saliency, logits\) from TensorPlugin\.explain"):
        egl.create("explainer", "contract_tensor", model)(x, y)


def test_a_saliency_of_the_wrong_shape_or_batch_is_named(model: torch.nn.Module) -> None:
    x, y = _batch()
    with pytest.raises(egl.InputError, match=r"FlatPlugin\.explain: 'saliency' expected a floating-point "
                                             r"\[B, 1, H, W\] map with B = 4 .*got saliency = a torch\.float32 "
                                             r"tensor of shape \[4, 64, 64\].*sal\[:, None\]"):
        egl.create("explainer", "contract_flat", model)(x, y)
    with pytest.raises(egl.InputError, match=r"OneMapPlugin\.explain: 'saliency' .*B = 4 .*shape \[1, 1, 64, 64\]"):
        egl.create("explainer", "contract_one_map", model)(x, y)


@pytest.mark.parametrize("explainer", ["contract_no_graph", NoGraphPlugin])
def test_align_warns_of_an_explainer_that_ignores_create_graph(model: torch.nn.Module, explainer: Any) -> None:
    """A map that does not require grad under create_graph=True trains nothing. A warning, not an error:
    a map may rightly depend on no trainable parameter (only a head's bias trains, BitFit)."""
    from egl.explainers import base

    base._WARNED_NO_GRAPH.discard(NoGraphPlugin)
    recipe = recipes.align(model, explainer=explainer if isinstance(explainer, str) else explainer(model),
                           warmup_steps=0).train()
    with pytest.warns(UserWarning, match=r"NoGraphPlugin\.explain: create_graph=True was asked and \d+ of ResNet's "
                                         r"parameters require grad, but the saliency does not require grad: .*"
                                         r"torch\.autograd\.grad\(\.\.\., create_graph=create_graph\)"):
        terms = recipe.compute_phase("classifier", _batch(), step=0)
    assert not terms["align"].requires_grad  # (what the warning says)


def test_a_map_that_no_trainable_parameter_shapes_is_not_an_error(model: torch.nn.Module) -> None:
    import warnings

    from egl.explainers import GradCAM

    model.requires_grad_(False)
    model.get_classifier().bias.requires_grad_(True)  # BitFit-style: only the head's bias trains
    x, y = _batch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = GradCAM(model).explain(x, y, create_graph=True)
    assert out.logits.requires_grad and not out.saliency.requires_grad
    model.requires_grad_(True)


def test_detached_logits_under_create_graph_are_named(model: torch.nn.Module) -> None:
    x, y = _batch()
    with pytest.raises(egl.InputError, match=r"DetachedLogitsPlugin\.explain: 'logits' expected logits that "
                                             r"require grad .*got logits that do not.*ALIGN's cross-entropy"):
        DetachedLogitsPlugin(model).explain(x, y, create_graph=True)
    assert DetachedLogitsPlugin(model)(x, y).shape == (4, 1, 64, 64)  # without create_graph: fine


def test_a_plugin_that_keeps_the_contract_trains_under_align(model: torch.nn.Module) -> None:
    x, y = _batch()
    out = egl.create("explainer", "contract_good", model).explain(x, y)
    assert isinstance(out, Explanation) and out.saliency.shape == (4, 1, 64, 64) and not out.saliency.requires_grad
    recipe = recipes.align(model, explainer="contract_good", warmup_steps=0).train()
    terms = recipe.compute_phase("classifier", (x, y), step=0)
    assert terms["align"].requires_grad
    terms["total"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad(set_to_none=True)


def test_no_error_where_nothing_could_require_grad(model: torch.nn.Module) -> None:
    x, y = _batch()
    with torch.no_grad():  # grad disabled by the caller: nothing is asked of the map
        NoGraphPlugin(model).explain(x, y, create_graph=True)
    frozen = make_model("test_resnet").requires_grad_(False)  # no trainable parameter, an input without grad
    NoGraphPlugin(frozen).explain(x, y, create_graph=True)


def test_the_check_keeps_the_signature_and_wraps_once() -> None:
    assert list(inspect.signature(GoodPlugin.explain).parameters) == ["self", "x", "target", "create_graph"]
    assert GoodPlugin.explain.__wrapped__.__name__ == "explain"  # type: ignore[attr-defined]

    class Reused(Explainer):
        explain = GoodPlugin.explain  # an already checked explain is not wrapped again

    assert Reused.explain is GoodPlugin.explain
