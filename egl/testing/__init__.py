"""Contract checks for egl components, for plugin authors' own tests (after pytest's ``pytester``
and timm's tests over ``list_models()``).

egl runs these checks over every registered component in its own test suite; a plugin runs them
over its own::

    from egl.testing import check_component

    def test_my_explainer_keeps_egls_contract():
        check_component("explainer", "gradient_x_input")   # the registered name, or the class

    def test_my_recipe_keeps_egls_contract():
        check_component("recipe", MyRecipe, warmup_steps=1)  # kwargs go to the constructor

A failed check raises :class:`ContractError` (an ``AssertionError``) naming the component, the
check and what differed. :func:`checks` lists a kind's checks, so a test can run each as its own
``pytest`` case (``only=``). Everything runs on tiny, randomly initialised timm models (no download);
the random state is left as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from egl._check import check_choice, describe, fail
from egl.testing import alignment, explainers, maskers, recipes, regularizers
from egl.testing._common import NUM_CLASSES, ContractError, Subject, hook_count, resolve, tiny_model

__all__ = ["check_component", "checks", "ContractError", "tiny_model", "hook_count", "NUM_CLASSES"]


def _named(s: Subject) -> None:
    """The class has a lowercase ``name`` (the registered one) and a docstring; a recipe is a
    :class:`egl.recipes.Recipe` subclass or a factory of one."""
    name = getattr(s.factory, "name", None) if isinstance(s.factory, type) else getattr(s.factory, "__name__", None)
    s.expect(isinstance(name, str) and name.isidentifier() and name == name.lower(),
             f"'name' is {name!r}, expected a lowercase identifier such as 'my_cam'")
    if s.registered is not None:
        s.expect(name == s.registered,
                 f"registered as {s.registered!r} but its 'name' is {name!r}")
    s.expect(bool((s.factory.__doc__ or "").strip()), "has no docstring (egl list shows its first line)")


CHECKS: dict[str, dict[str, Callable[[Subject], None]]] = {
    "explainer": explainers.CHECKS,
    "masker": maskers.CHECKS,
    "alignment": alignment.CHECKS,
    "regularizer": regularizers.CHECKS,
    "recipe": recipes.CHECKS,
}


def checks(kind: str) -> list[str]:
    """The names of ``kind``'s checks, in the order :func:`check_component` runs them."""
    check_choice(kind, tuple(CHECKS), "egl.testing.checks", "kind")
    return ["named", *CHECKS[kind]]


def check_component(kind: str, component: object, *, only: str | Sequence[str] | None = None,
                    device: str = "cpu", on: str | Callable[[], Any] = "test_resnet", **kwargs: Any) -> None:
    """Run egl's contract checks of ``kind`` on ``component``.

    Args:
        kind: ``"explainer"``, ``"masker"``, ``"alignment"``, ``"regularizer"`` or ``"recipe"``.
        component: a registered name (the class is looked up, so this also checks the plugin is
            found), or the class itself (a recipe: its class or factory).
        only: one check's name, or several (see :func:`checks`); default every check.
        device: where the checks run (``"cuda"`` to check the GPU path too).
        on: the classifier the explainer, alignment, regularizer and recipe checks run on: a tiny
            timm model's name (``"test_resnet"``, default; ``"test_vit"`` for a ViT-only
            explainer) or a factory returning a model with ``NUM_CLASSES`` (5) outputs that takes
            64-px RGB images.
        **kwargs: constructor arguments (an explainer also gets the model first, a recipe the
            model first; a loss or regularizer gets ``reduction=`` from the checks). A recipe
            whose phases start late needs them to start within three steps (``warmup_steps=1``).

    Raises:
        ContractError: the first check that fails, naming the component, the check and what differed.
        InputError: an unknown ``kind`` or check name, or ``component`` is an instance.
    """
    fn = "egl.testing.check_component"
    check_choice(kind, tuple(CHECKS), fn, "kind")
    factory = resolve(kind, component, fn)
    names = checks(kind) if only is None else [only] if isinstance(only, str) else list(only)
    unknown = [n for n in names if n not in checks(kind)]
    if unknown:
        raise fail(fn, "only", f"names of {kind} checks, {checks(kind)}", describe(only),
                   "Pick from egl.testing.checks(kind)")
    s = Subject(kind, factory, kwargs, device, on)
    s.registered = component if isinstance(component, str) else None
    for name in names:
        s.check = name
        (_named if name == "named" else CHECKS[kind][name])(s)
