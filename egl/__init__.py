"""egl: explanation-guided learning for PyTorch.

Importing egl registers nothing and loads no plugin: the plugin manager is built on
the first registry call (``list_components``, ``create``, ``plugin_report``).

Example:
    >>> import egl
    >>> egl.list_components("masker")
    ['grayscale', 'ground_truth', 'learned', 'sam']
"""

from egl._plugins import EGLPluginWarning, PluginInfo, plugin_report, register_plugin, unregister_plugin
from egl._plugins import reset as reset_plugins
from egl.errors import (
    ComponentNotFoundError,
    DuplicateComponentError,
    EGLError,
    InputError,
    MissingDependencyError,
    PluginError,
    RankFailedError,
    UnsupportedModelError,
)
from egl.hookspecs import hookimpl
from egl.registry import KINDS, component_source, create, get_component, list_components, resolve

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "KINDS",
    "list_components",
    "get_component",
    "create",
    "resolve",
    "component_source",
    "plugin_report",
    "register_plugin",
    "unregister_plugin",
    "reset_plugins",
    "PluginInfo",
    "EGLPluginWarning",
    "hookimpl",
    "EGLError",
    "InputError",
    "ComponentNotFoundError",
    "DuplicateComponentError",
    "PluginError",
    "MissingDependencyError",
    "UnsupportedModelError",
    "RankFailedError",
]
