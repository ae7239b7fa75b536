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
    """
    table = _table(kind, "egl.get_component")
    if name not in table:
        available = sorted(table)
        close = difflib.get_close_matches(str(name), available, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ComponentNotFoundError(
            f"egl: no {kind} named {name!r}.{hint} Available: {', '.join(available) or '(none)'}. "
            "Third-party components need their plugin installed (see `egl plugins`)."
        )
    return table[name].component


def create(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    """Instantiate the component ``(kind, name)`` with ``args`` and ``kwargs``."""
    return get_component(kind, name)(*args, **kwargs)


def resolve(kind: str, spec: Any, *args: Any, **kwargs: Any) -> Any:
    """``spec`` as a component: a registered name is created, anything else is returned as is."""
    if isinstance(spec, str):
        return create(kind, spec, *args, **kwargs)
    return spec


def component_source(kind: str, name: str) -> str:
    """Which plugin (and distribution) registered ``(kind, name)``."""
    get_component(kind, name)
    return _plugins.components(kind)[name].plugin.source
