"""The plugin manager: built lazily on first use, cached, resettable.

Load order: egl's own components (entry point ``builtins`` of the ``egl``
distribution, or the module directly when egl runs from a source tree without
being installed), then every other entry point of the ``egl`` group, one by one.

The manager is built whole: every plugin is loaded and every component table is
collected at once, so what is registered never depends on which kind was asked for
first. A third-party plugin that fails to import, implements a hook egl does not
define, raises in a hook, registers something invalid or reuses a registered name is
skipped as a whole, with one warning naming it and its distribution (conda's
``load_entrypoints``), unless ``EGL_STRICT_PLUGINS=1``. ``EGL_DISABLE_PLUGINS=a,b``
skips plugins by entry-point name.
"""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import inspect
import os
import re
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pluggy

from egl import hookspecs
from egl._check import describe, fail
from egl.errors import DuplicateComponentError, EGLError, PluginError

__all__ = [
    "PluginInfo",
    "EGLPluginWarning",
    "KIND_HOOKS",
    "get_plugin_manager",
    "components",
    "plugin_report",
    "register_plugin",
    "unregister_plugin",
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
        dist = f"{self.distribution} {self.version or ''}".strip() if self.distribution else "no distribution"
        return f"plugin '{self.name}' ({dist})"


@dataclass
class _Entry:
    component: Any
    plugin: PluginInfo


@dataclass
class _State:
    pm: pluggy.PluginManager
    loaded: dict[str, PluginInfo] = field(default_factory=dict)  # keyed by the manager's plugin name
    skipped: list[PluginInfo] = field(default_factory=list)  # failed and disabled plugins
    tables: dict[str, dict[str, _Entry]] = field(default_factory=lambda: {k: {} for k in KIND_HOOKS})


class _Rejected(Exception):
    """A plugin cannot be used: ``what`` says at which step, ``exc`` why."""

    def __init__(self, what: str, exc: BaseException) -> None:
        super().__init__(f"{what}: {_text(exc)}")
        self.what = what
        self.exc = exc


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


class _Invalid(TypeError):
    """A hook returned something that is not a valid component (egl's own message)."""


def _text(exc: BaseException) -> str:
    """``str(exc)`` for egl's own messages, ``Type: message`` for anything else; no final period."""
    msg = " ".join(str(exc).split())  # one line, for warnings and the `egl plugins` table
    if isinstance(exc, (EGLError, _Invalid)) and msg:
        return msg.rstrip(".")
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


# -- loading ----------------------------------------------------------------------------
def _register(pm: pluggy.PluginManager, plugin: Any, name: str | None) -> str:
    """Register ``plugin``; refuse (and undo) it when it implements a hook egl does not define."""
    if plugin is None:
        raise ValueError("the plugin object is None (does the entry point name the right module?)")
    pname = pm.register(plugin, name=name)
    if pname is None:  # egl never blocks names, but a caller of get_plugin_manager() may
        raise ValueError(f"the plugin name {name!r} is blocked in the plugin manager")
    unknown = sorted(
        caller.name for caller in pm.get_hookcallers(plugin) or []
        if not caller.has_spec()
        and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls())
    )
    if unknown:
        pm.unregister(name=pname)
        raise ValueError(
            f"it implements {', '.join(unknown)}, which egl does not define; the hooks are "
            f"{', '.join(KIND_HOOKS.values())}"
        )
    marked = {caller.name for caller in pm.get_hookcallers(plugin) or []}
    unmarked = sorted(n for n in KIND_HOOKS.values() if n not in marked and callable(getattr(plugin, n, None)))
    if unmarked:  # pluggy ignores a function without the marker: the plugin would register nothing, silently
        pm.unregister(name=pname)
        raise ValueError(f"it defines {', '.join(unmarked)} without the @egl.hookimpl marker, so pluggy would not "
                         "call it; decorate each hook function with @egl.hookimpl")
    return pname


def _problem(state: _State, info: PluginInfo, rej: _Rejected) -> None:
    """Skip a failing plugin: record it, then raise in strict mode or warn (once) otherwise."""
    if state.pm.has_plugin(info.name) and state.loaded.get(info.name) is info:
        state.pm.unregister(name=info.name)
        del state.loaded[info.name]
    state.skipped.append(replace(info, status="failed", error=str(rej)))
    if strict_mode():
        if isinstance(rej.exc, DuplicateComponentError):
            raise rej.exc
        raise PluginError(
            f"egl: '{info.name}' expected a plugin that loads and registers valid components, got "
            f"{info.source}, which {rej}. Fix or uninstall it, skip it with "
            f"EGL_DISABLE_PLUGINS={info.name}, or unset EGL_STRICT_PLUGINS to only warn."
        ) from rej.exc
    warnings.warn(
        f"egl: {info.source} {rej.what} and was skipped: {_text(rej.exc)}. Set "
        f"EGL_DISABLE_PLUGINS={info.name} to silence this, or EGL_STRICT_PLUGINS=1 to make it an error.",
        EGLPluginWarning,
        stacklevel=2,
    )


def _load(state: _State) -> None:
    disabled = _disabled()
    builtin_seen = False
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        info = PluginInfo(ep.name, getattr(dist, "name", None), getattr(dist, "version", None), "loaded")
        is_builtin = ep.name == BUILTIN_PLUGIN and ep.value == BUILTIN_MODULE
        if is_builtin:
            if builtin_seen:  # the same egl seen twice on sys.path (editable + site): keep one
                continue
            builtin_seen = True
        elif ep.name in disabled:
            state.skipped.append(replace(info, status="disabled"))
            continue
        try:
            if not is_builtin and ep.name == BUILTIN_PLUGIN:
                raise ValueError(f"the entry-point name '{BUILTIN_PLUGIN}' is reserved for egl's own components")
            if state.pm.has_plugin(ep.name):
                raise ValueError(f"the entry-point name '{ep.name}' is already used by "
                                 f"{state.loaded[ep.name].source}")
            _register(state.pm, ep.load(), ep.name)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - no plugin failure may break (or exit) egl
            if is_builtin:
                raise
            _problem(state, info, _Rejected("failed to load", exc))
            continue
        state.loaded[ep.name] = info
    if not builtin_seen:  # running from a source tree that was never pip-installed
        _register(state.pm, importlib.import_module(BUILTIN_MODULE), BUILTIN_PLUGIN)
        state.loaded[BUILTIN_PLUGIN] = PluginInfo(BUILTIN_PLUGIN, "egl", None, "loaded")


# -- collecting components --------------------------------------------------------------
def _component_name(obj: Any, hook: str) -> str:
    name = getattr(obj, "name", None)
    if name is None and callable(obj) and not isinstance(obj, type):
        name = getattr(obj, "__name__", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _Invalid(
            f"{hook}(): 'name' expected a lowercase identifier string on {obj!r}, got {name!r}. "
            "Give the class an attribute such as name = \"my_explainer\""
        )
    return name


def _gather(pm: pluggy.PluginManager, pname: str) -> dict[str, list[tuple[str, Any]]]:
    """Every component one plugin registers, by kind, validated; raises :class:`_Rejected`."""
    found: dict[str, list[tuple[str, Any]]] = {}
    for kind, hook in KIND_HOOKS.items():
        found[kind] = []
        for impl in getattr(pm.hook, hook).get_hookimpls():
            if impl.plugin_name != pname:
                continue
            try:
                items = impl.function()
            except Exception as exc:  # noqa: BLE001
                raise _Rejected(f"raised in {hook}()", exc) from exc
            if items is None:
                continue
            try:
                if not isinstance(items, (list, tuple)):
                    raise _Invalid(f"{hook}(): 'return value' expected a list of component classes, got "
                                    f"{describe(items)}. Return a list such as [MyExplainer]")
                for obj in items:
                    if not callable(obj) or not (inspect.isclass(obj) or inspect.isroutine(obj)):
                        raise _Invalid(f"{hook}(): 'component' expected a class or factory callable, got "
                                        f"{describe(obj)}. Return the class itself (egl builds the instances)")
                    base = _KIND_BASES.get(kind)
                    wrong = next((k for k, b in _KIND_BASES.items() if k != kind and b is not None
                                  and inspect.isclass(obj) and issubclass(obj, _base_class(b))), None)
                    if inspect.isclass(obj) and base is not None and wrong is not None \
                            and not issubclass(obj, _base_class(base)):
                        article = "an" if wrong[0] in "aeiou" else "a"
                        parent = _base_class(_KIND_BASES[wrong]).__name__
                        raise _Invalid(f"{hook}(): 'component' expected a {kind} class, got {obj.__name__}, "
                                        f"{article} {wrong} (it subclasses {parent}). Return it "
                                        f"from egl_register_{_HOOK_KINDS.get(wrong, wrong + 's')}")
                    found[kind].append((_component_name(obj, hook), obj))
            except _Invalid as exc:
                raise _Rejected("registered an invalid component", exc) from exc
    return found


#: Each kind's base class (module path), to name a component returned from another kind's hook.
_KIND_BASES = {"explainer": "egl.explainers.base:Explainer", "masker": "egl.maskers.base:Masker",
               "alignment": "egl.losses.base:AlignmentLoss", "regularizer": "egl.regularizers.base:Regularizer",
               "recipe": "egl.recipes.base:Recipe"}
_HOOK_KINDS = {"alignment": "alignment_losses"}


def _base_class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _admit(state: _State, pname: str, fn: str = "egl") -> None:
    """Add one registered plugin's components to the tables, all of them or none (raises :class:`_Rejected`)."""
    info = state.loaded[pname]
    found = _gather(state.pm, pname)
    for kind, items in found.items():
        seen: dict[str, PluginInfo] = {}
        for name, _obj in items:
            entry = state.tables[kind].get(name)
            first = entry.plugin if entry is not None else seen.get(name)
            if first is not None:
                inherited = "" if name != getattr(getattr(_obj, "__mro__", [None, None])[1], "name", None) else \
                    f" (inherited: give {getattr(_obj, '__name__', name)} a name of its own)"
                fix = (f"Rename the component{inherited} (egl's own names cannot be replaced)"
                       if first.name == "builtins"
                       else f"Rename the component{inherited}, or skip one plugin with EGL_DISABLE_PLUGINS={pname}"
                       if fn == "egl"
                       else f"Rename the component{inherited}, or call egl.unregister_plugin('{first.name}') first")
                raise _Rejected("registered a duplicate component", DuplicateComponentError(
                    f"{fn}: '{name}' expected a unique {kind} name, got it from "
                    f"{first.source} and from {info.source}. {fix}."
                ))
            seen[name] = info
    for kind, items in found.items():
        for name, obj in items:
            state.tables[kind][name] = _Entry(obj, info)


def _build() -> _State:
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    state = _State(pm)
    _load(state)
    # Builtins first, so a third-party duplicate is the one rejected; then load order.
    for pname in sorted(state.loaded, key=lambda n: n != BUILTIN_PLUGIN):
        try:
            _admit(state, pname)
        except _Rejected as rej:
            if pname == BUILTIN_PLUGIN:
                raise rej.exc from None
            _problem(state, state.loaded[pname], rej)
    return state


def _state() -> _State:
    global _STATE
    with _LOCK:
        if _STATE is None:
            _STATE = _build()
        return _STATE


# -- public -----------------------------------------------------------------------------
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide :class:`pluggy.PluginManager`, built on first call.

    Register through :func:`register_plugin`: a plugin registered on the manager directly
    bypasses egl's checks and is not seen by the registry.
    """
    return _state().pm


def components(kind: str) -> dict[str, _Entry]:
    """``{name: entry}`` for one kind (collected once per manager build; do not mutate)."""
    return _state().tables[kind]


def plugin_report() -> list[PluginInfo]:
    """Every plugin egl saw, loaded, failed or disabled: egl's own first, then by name."""
    state = _state()
    with _LOCK:
        infos = [*state.loaded.values(), *state.skipped]
    return sorted(infos, key=lambda i: (i.name != BUILTIN_PLUGIN, i.name, i.distribution or ""))


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin object at run time (a notebook, a test); returns its name.

    Unlike entry-point plugins, a problem here raises at once: the caller is present.

    Raises:
        PluginError: the name or object is already registered, or the plugin implements
            hooks wrongly, raises in one, or registers an invalid component.
        DuplicateComponentError: it registers a name another plugin already uses.
    """
    fn = "egl.register_plugin"
    if name is not None and (not isinstance(name, str) or not name):
        raise fail(fn, "name", "None or a non-empty string", describe(name), "Pass a string such as 'my_plugin'")
    state = _state()
    with _LOCK:
        if name is not None and state.pm.has_plugin(name):
            raise PluginError(f"{fn}: 'name' expected a name no other plugin uses, got {name!r}. Pass another "
                              f"name, or call egl.unregister_plugin({name!r}) first.")
        other = state.pm.get_name(plugin)
        if other is not None:
            raise PluginError(f"{fn}: 'plugin' expected an object not registered yet, got {describe(plugin)}, "
                              f"already registered as {other!r}. Call egl.unregister_plugin({other!r}) first.")
        try:
            pname = _register(state.pm, plugin, name)
        except Exception as exc:  # pluggy's ValueError / PluginValidationError, or an unknown hook
            raise PluginError(f"{fn}: 'plugin' expected hook implementations that match egl.hookspecs, got "
                              f"{describe(plugin)}: {_text(exc)}. Fix the hook names and signatures.") from exc
        state.loaded[pname] = PluginInfo(pname, None, None, "loaded")
        try:
            _admit(state, pname, fn)
        except _Rejected as rej:
            state.pm.unregister(name=pname)
            del state.loaded[pname]
            if isinstance(rej.exc, DuplicateComponentError):
                raise rej.exc from None
            raise PluginError(f"{fn}: 'plugin' expected hooks that return valid components, got "
                              f"{describe(plugin)}, which {rej}. Fix the plugin.") from rej.exc
        return pname


def unregister_plugin(name: str) -> None:
    """Remove a plugin (one registered with :func:`register_plugin`, or a third-party one) and its components.

    Raises:
        InputError: ``name`` is egl's own plugin or no loaded plugin.
    """
    state = _state()
    with _LOCK:
        info = state.loaded.get(name) if isinstance(name, str) else None
        if info is None or name == BUILTIN_PLUGIN:
            names = sorted(n for n in state.loaded if n != BUILTIN_PLUGIN)
            raise fail("egl.unregister_plugin", "name", "the name of a loaded plugin other than egl's own",
                       repr(name), f"Pick one of {names} (see egl.plugin_report())")
        state.pm.unregister(name=name)
        del state.loaded[name]
        for table in state.tables.values():
            for cname in [c for c, e in table.items() if e.plugin is info]:
                del table[cname]


def reset() -> None:
    """Forget the plugin manager; the next use rebuilds it (re-reading the environment)."""
    global _STATE
    with _LOCK:
        _STATE = None

