"""List and create components by ``(kind, name)``, after timm's ``list_models`` / ``create_model``.

Kinds: ``explainer``, ``masker``, ``alignment``, ``regularizer``, ``recipe``.

Example:
    >>> import egl
    >>> egl.list_components("explainer", "*_cam")
    ['eigen_cam', 'grad_cam', 'hires_cam', 'layer_cam', 'score_cam', 'xgrad_cam']
    >>> loss = egl.create("alignment", "bce")
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any

from egl import _plugins
from egl._check import check_choice, describe, fail
from egl.errors import ComponentNotFoundError

__all__ = ["KINDS", "list_components", "get_component", "create", "resolve", "component_source"]

KINDS: tuple[str, ...] = tuple(_plugins.KIND_HOOKS)


def _table(kind: str, fn: str) -> dict[str, Any]:
    check_choice(kind, KINDS, fn, "kind")
    return _plugins.components(kind)


def list_components(kind: str, pattern: str = "*") -> list[str]:
    """Sorted names of registered components of ``kind`` matching an fnmatch ``pattern``."""
    if not isinstance(pattern, str):
        raise fail("egl.list_components", "pattern", "an fnmatch string such as 'grad*'",
                   repr(pattern), "Pass a string")
    return sorted(n for n in _table(kind, "egl.list_components") if fnmatch.fnmatchcase(n, pattern))


def get_component(kind: str, name: str) -> Any:
    """The registered class (or factory) for ``(kind, name)``.

    Raises:
        ComponentNotFoundError: with "did you mean" suggestions and the available names.
        InputError: ``kind`` is not one of :data:`KINDS`.
    """
    return _lookup(kind, name, "egl.get_component")


def _lookup(kind: str, name: str, fn: str, arg: str = "name") -> Any:
    table = _table(kind, fn)
    if not isinstance(name, str) or name not in table:
        available = sorted(table)
        close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.5)
        hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ComponentNotFoundError(
            f"{fn}: '{arg}' expected a registered {kind} name, got {name!r}. {hint}"
            f"Available: {', '.join(available) or '(none)'}; a third-party {kind} needs its plugin "
            "installed (see `egl plugins`)."
        )
    return table[name].component


def create(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Instantiate the component ``(kind, name)`` with ``args`` and ``kwargs``.

    Example:
        >>> import egl
        >>> egl.create("alignment", "bce", reduction="sum").reduction
        'sum'
    """
    return _build(_lookup(kind, name, "egl.create"), kind, name, "egl.create", args, kwargs)


def resolve(kind: str, spec: Any, *args: Any, **kwargs: Any) -> Any:
    """``spec`` as a component: a registered name is created (with ``args`` and ``kwargs``), a dict
    ``{"name": ..., "kwargs": {...}}`` too (its kwargs over ``kwargs``: the form a YAML config
    writes, ``masker: {name: learned, kwargs: {width: 16}}``, as ``data.masks_from`` does), anything
    else is returned as is.

    Example:
        >>> import egl
        >>> egl.resolve("alignment", {"name": "bce", "kwargs": {"eps": 1e-3}}).eps
        0.001
    """
    if isinstance(spec, str):
        return _build(_lookup(kind, spec, "egl.resolve"), kind, spec, "egl.resolve", args, kwargs)
    if isinstance(spec, dict):
        name, extra = spec.get("name"), getattr(spec.get("kwargs"), "items", None)
        if not isinstance(name, str) or set(spec) - {"name", "kwargs"} or (spec.get("kwargs") is not None
                                                                           and not isinstance(spec["kwargs"], dict)):
            example = (list_components(kind) or ["..."])[0]
            raise fail("egl.resolve", kind, f"a registered {kind} name, an instance, or a dict {{name: ..., "
                       f"kwargs: {{...}}}}", f"{describe(spec)}",
                       f"Write e.g. {{'name': '{example}', 'kwargs': {{...}}}}: the arguments go under 'kwargs'")
        arguments = dict(extra()) if extra is not None else {}
        return _build(_lookup(kind, name, "egl.resolve"), kind, name, "egl.resolve", args, {**kwargs, **arguments})
    return spec


def _build(factory: Any, kind: str, name: str, fn: str, args: tuple[Any, ...], kwargs: dict[str, Any],
           arg: str = "args") -> Any:
    """``factory(*args, **kwargs)``; arguments its signature does not take are named (as ``fn``'s
    ``arg``) with the component and its signature (not as a ``TypeError`` from a base class's
    ``__init__``)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call say
        sig = None
    if sig is not None:
        try:
            sig.bind(*args, **kwargs)
        except TypeError as e:
            given = ", ".join([*(type(a).__name__ for a in args), *(f"{k}={v!r}"[:60] for k, v in kwargs.items())])
            shown = sig.replace(return_annotation=inspect.Signature.empty)
            unknown = [k for k in kwargs if k not in sig.parameters]
            close = difflib.get_close_matches(unknown[0], list(sig.parameters), n=1) if unknown else []
            hint = f"Did you mean {close[0]!r} (for {unknown[0]!r})? " if close else ""
            raise fail(fn, arg, f"the arguments of {kind} '{name}' {shown}", f"({given}): {e}",
                       f"{hint}Pass the arguments {kind} '{name}' takes (egl list {kind} shows every {kind})") from None
    return factory(*args, **kwargs)


def component_source(kind: str, name: str) -> str:
    """Which plugin (and distribution) registered ``(kind, name)``."""
    _lookup(kind, name, "egl.component_source")
    return _plugins.components(kind)[name].plugin.source
