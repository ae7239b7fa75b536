"""Exceptions raised by egl.

Every egl error subclasses :class:`EGLError` *and* the builtin that fits the
failure, so ``except ValueError`` keeps working for code that does not know egl.
"""

from __future__ import annotations

__all__ = [
    "EGLError",
    "InputError",
    "ComponentNotFoundError",
    "DuplicateComponentError",
    "PluginError",
    "UnsupportedModelError",
    "MissingDependencyError",
    "RankFailedError",
]


class EGLError(Exception):
    """Base class of every error egl raises on purpose."""


class InputError(EGLError, ValueError):
    """A public function received an argument of the wrong shape, type or range."""


class ComponentNotFoundError(EGLError, KeyError):
    """No registered component has the requested (kind, name)."""

    def __str__(self) -> str:  # KeyError would repr() the message and add quotes
        return str(self.args[0]) if self.args else ""


class DuplicateComponentError(EGLError, ValueError):
    """Two plugins registered the same component name for one kind."""


class PluginError(EGLError, RuntimeError):
    """A plugin failed to load or registered something invalid (strict mode only)."""


class UnsupportedModelError(EGLError, ValueError):
    """egl cannot find a spatial target layer (or a head) in the model it was given."""


class MissingDependencyError(EGLError, ImportError):
    """An optional feature needs a package that is not installed (the message names the extra)."""


class RankFailedError(EGLError, RuntimeError):
    """Under ``torch.distributed``: another rank failed with an error that is not an input check
    (out of memory, a bug); this rank stops at the same step instead of waiting for it."""
