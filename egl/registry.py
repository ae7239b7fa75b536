"""List and create components by ``(kind, name)``, after timm's ``list_models`` / ``create_model``.

Kinds: ``explainer``, ``masker``, ``alignment``, ``regularizer``, ``recipe``.

Example:
    >>> import egl
    >>> egl.list_components("explainer", "grad*")
    ['grad_cam']
    >>> loss = egl.create("alignment", "bce")
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any

from egl import _plugins
from egl._check import check_choice, fail
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


def _lookup(kind: str, name: str, fn: str) -> Any:
    table = _table(kind, fn)
    if not isinstance(name, str) or name not in table:
        available = sorted(table)
        close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.5)
        hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ComponentNotFoundError(
            f"{fn}: 'name' expected a registered {kind} name, got {name!r}. {hint}"
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
    return _lookup(kind, name, "egl.create")(*args, **kwargs)


def resolve(kind: str, spec: Any, *args: Any, **kwargs: Any) -> Any:
    """``spec`` as a component: a registered name is created, anything else is returned as is."""
    if isinstance(spec, str):
        return _lookup(kind, spec, "egl.resolve")(*args, **kwargs)
    return spec


def component_source(kind: str, name: str) -> str:
    """Which plugin (and distribution) registered ``(kind, name)``."""
    _lookup(kind, name, "egl.component_source")
    return _plugins.components(kind)[name].plugin.source
