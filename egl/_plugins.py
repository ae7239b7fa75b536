"""The plugin manager: built lazily on first use, cached, resettable.

Load order: egl's own components (entry point ``builtins`` of the ``egl``
distribution, or the module directly when egl runs from a source tree without
being installed), then every other entry point of the ``egl`` group, one by one.
A plugin that fails to import or registers something invalid is skipped with one
warning naming it and its distribution (conda's ``load_entrypoints``), unless
``EGL_STRICT_PLUGINS=1``. ``EGL_DISABLE_PLUGINS=a,b`` skips plugins by entry-point name.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from egl import hookspecs
from egl.errors import DuplicateComponentError, PluginError

__all__ = [
    "PluginInfo",
    "EGLPluginWarning",
    "KIND_HOOKS",
    "get_plugin_manager",
    "components",
    "plugin_report",
    "register_plugin",
    "reset",
    "strict_mode",
]

BUILTIN_PLUGIN = "builtins"
BUILTIN_MODULE = "egl._builtins"
KIND_HOOKS: dict[str, str] = {
    "explainer": "egl_register_explainers",
    "masker": "egl_register_maskers",
    "alignment": "egl_register_alignment_losses",
    "regularizer": "egl_register_regularizers",
    "recipe": "egl_register_recipes",
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_.\-]*$")


class EGLPluginWarning(UserWarning):
    """A third-party plugin was skipped (see :func:`egl.plugin_report`)."""


@dataclass(frozen=True)
class PluginInfo:
    """What happened to one plugin: ``status`` is ``loaded``, ``failed`` or ``disabled``."""

    name: str
    distribution: str | None
    version: str | None
    status: str
    error: str | None = None

    @property
    def source(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "no distribution"
        return f"plugin '{self.name}' ({dist})"


@dataclass
class _Entry:
    component: Any
    plugin: PluginInfo


@dataclass
class _State:
    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo] = field(default_factory=dict)
    tables: dict[str, dict[str, _Entry]] = field(default_factory=dict)


_LOCK = threading.RLock()
_STATE: _State | None = None


def strict_mode() -> bool:
    """True when ``EGL_STRICT_PLUGINS`` is set to a true value."""
    return os.environ.get("EGL_STRICT_PLUGINS", "").strip().lower() in {"1", "true", "yes", "on"}


def _disabled() -> set[str]:
    raw = os.environ.get("EGL_DISABLE_PLUGINS", "")
    return {p.strip() for p in raw.split(",") if p.strip()}


def _entry_points() -> Iterable[metadata.EntryPoint]:
    """The ``egl`` entry points of every installed distribution (tests monkeypatch this)."""
    return metadata.entry_points(group=hookspecs.PROJECT_NAME)


def _problem(state: _State, info: PluginInfo, exc: BaseException, what: str) -> None:
    """Record a failing plugin; raise in strict mode, warn once otherwise."""
    failed = PluginInfo(info.name, info.distribution, info.version, "failed", f"{what}: {exc}")
    state.infos[info.name] = failed
    if strict_mode():
        raise PluginError(
            f"egl: {info.source} {what}: {exc}. Fix or uninstall the plugin, or skip it with "
            f"EGL_DISABLE_PLUGINS={info.name}; unset EGL_STRICT_PLUGINS to only warn."
        ) from exc
    warnings.warn(
        f"egl: {info.source} {what} and was skipped: {exc}. Set EGL_DISABLE_PLUGINS={info.name} "
        "to silence this, or EGL_STRICT_PLUGINS=1 to make it an error.",
        EGLPluginWarning,
        stacklevel=4,
    )


def _load(state: _State) -> None:
    disabled = _disabled()
    builtin_seen = False
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, dist.name if dist else None, dist.version if dist else None, "loaded")
        is_builtin = ep.name == BUILTIN_PLUGIN and ep.value == BUILTIN_MODULE
        if is_builtin:
            if builtin_seen:  # the same egl seen twice on sys.path (editable + site): keep one
                continue
            builtin_seen = True
        elif ep.name in disabled:
            state.infos[ep.name] = PluginInfo(info.name, info.distribution, info.version, "disabled")
            continue
        try:
            plugin = ep.load()
            if state.pm.has_plugin(ep.name):
                raise ValueError(f"another plugin already uses the entry-point name '{ep.name}'")
            state.pm.register(plugin, name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any plugin failure must not break egl
            if is_builtin:
                raise
            _problem(state, info, exc, "failed to load")
            continue
        state.infos[ep.name] = info
    if not builtin_seen:  # running from a source tree that was never pip-installed
        state.pm.register(importlib.import_module(BUILTIN_MODULE), name=BUILTIN_PLUGIN)
        state.infos[BUILTIN_PLUGIN] = PluginInfo(BUILTIN_PLUGIN, "egl", None, "loaded")


def _component_name(obj: Any) -> str:
    name = getattr(obj, "name", None)
    if name is None and callable(obj) and not isinstance(obj, type):
        name = getattr(obj, "__name__", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise TypeError(
            f"component {obj!r} has name {name!r}; expected a lowercase identifier string in a "
            "class attribute 'name' (e.g. name = \"my_explainer\")"
        )
    return name


def _collect(state: _State, kind: str) -> dict[str, _Entry]:
    hook: Any = getattr(state.pm.hook, KIND_HOOKS[kind])
    table: dict[str, _Entry] = {}
    # Builtins first, so a third-party duplicate is the one rejected.
    impls = sorted(hook.get_hookimpls(), key=lambda i: i.plugin_name != BUILTIN_PLUGIN)
    for impl in impls:
        info = state.infos.get(impl.plugin_name) or PluginInfo(impl.plugin_name, None, None, "loaded")
        if info.status == "failed":
            continue
        try:
            items = impl.function()
            if items is None:
                continue
            if not isinstance(items, (list, tuple)):
                raise TypeError(f"{KIND_HOOKS[kind]}() returned {type(items).__name__}; expected a list")
        except Exception as exc:  # noqa: BLE001
            if info.name == BUILTIN_PLUGIN:
                raise
            _problem(state, info, exc, f"raised in {KIND_HOOKS[kind]}()")
            continue
        for obj in items:
            try:
                if not callable(obj):
                    raise TypeError(f"{KIND_HOOKS[kind]}() returned {obj!r}, which is not a class or callable")
                name = _component_name(obj)
                if name in table:
                    first = table[name].plugin
                    raise DuplicateComponentError(
                        f"{kind} '{name}' is registered twice: by {first.source} and by {info.source}. "
                        "Rename one of them, or disable one plugin with EGL_DISABLE_PLUGINS"
                    )
            except Exception as exc:  # noqa: BLE001
                if info.name == BUILTIN_PLUGIN:
                    raise
                _problem(state, info, exc, "registered an invalid component")
                continue
            table[name] = _Entry(obj, info)
    return table


def _state() -> _State:
    global _STATE
    with _LOCK:
        if _STATE is None:
            pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
            pm.add_hookspecs(hookspecs)
            state = _State(pm)
            _load(state)
            _STATE = state
        return _STATE


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide :class:`pluggy.PluginManager`, built on first call."""
    return _state().pm


def components(kind: str) -> dict[str, _Entry]:
    """``{name: entry}`` for one kind (collected once per manager build)."""
    state = _state()
    with _LOCK:
        if kind not in state.tables:
            state.tables[kind] = _collect(state, kind)
        return state.tables[kind]


def plugin_report() -> list[PluginInfo]:
    """Every plugin egl saw, loaded, failed or disabled, ordered by name."""
    state = _state()
    for kind in KIND_HOOKS:  # component-level failures only show once tables are built
        components(kind)
    return sorted(state.infos.values(), key=lambda i: (i.name != BUILTIN_PLUGIN, i.name))


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object at run time (a notebook, a test); returns its name.

    Unlike entry-point plugins, a problem here raises at once: the caller is present.
    """
    state = _state()
    with _LOCK:
        pname = state.pm.register(plugin, name=name)
        if pname is None:
            raise PluginError(f"egl.register_plugin: plugin {name or plugin!r} is blocked or already registered")
        state.infos[pname] = PluginInfo(pname, None, None, "loaded")
        tables = state.tables
        state.tables = {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", EGLPluginWarning)
                for kind in KIND_HOOKS:
                    components(kind)
        except Exception as exc:
            state.pm.unregister(name=pname)
            del state.infos[pname]
            state.tables = tables
            if isinstance(exc, EGLPluginWarning):
                raise PluginError(str(exc)) from None
            raise
        return pname


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered with :func:`register_plugin`."""
    state = _state()
    with _LOCK:
        state.pm.unregister(name=name)
        state.infos.pop(name, None)
        state.tables = {}


def reset() -> None:
    """Forget the plugin manager; the next use rebuilds it (re-reading the environment)."""
    global _STATE
    with _LOCK:
        _STATE = None


Factory = Callable[..., Any]
