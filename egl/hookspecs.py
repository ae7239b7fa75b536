"""Every hook an egl plugin can implement.

A plugin is any module or object with functions named like these hooks and
decorated with :data:`egl.hookimpl`. It is found through the ``egl`` entry-point
group of its distribution::

    [project.entry-points.egl]
    my_plugin = "my_package.egl_plugin"

egl's own components are registered through the very same hooks (see
``egl/_builtins.py``). Each hook returns a list of component classes (or factory
callables); each component carries a unique ``name`` attribute.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

__all__ = ["hookspec", "hookimpl", "PROJECT_NAME"]

PROJECT_NAME = "egl"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

Component = Callable[..., Any]


@hookspec
def egl_register_explainers() -> list[Component]:
    """Explainer classes: built as ``cls(model, **kwargs)``, called as ``exp(x, target)``
    and returning saliency of shape ``[B, 1, H, W]``. Subclass :class:`egl.explainers.Explainer`."""


@hookspec
def egl_register_maskers() -> list[Component]:
    """Masker classes (``nn.Module``): ``masker(x, mask=None)`` returns ``[B, 1, H, W]`` in [0, 1].
    Subclass :class:`egl.maskers.Masker`."""


@hookspec
def egl_register_alignment_losses() -> list[Component]:
    """Alignment loss classes (``nn.Module``, subclass :class:`egl.losses.AlignmentLoss`). Their
    ``inputs`` attribute says how they are called: ``"saliency"`` (default): ``loss(saliency, mask)``,
    minimal when saliency equals mask; ``"class_maps"``: ``loss(maps_of_every_class, mask)``;
    ``"batch"``: ``loss(model, x, mask)``."""


@hookspec
def egl_register_regularizers() -> list[Component]:
    """Regularizer classes (``nn.Module``). Each declares ``inputs = "mask"`` (called as
    ``reg(mask)``) or ``inputs = "explanation"`` (called as ``reg(explainer, x, target)``)."""


@hookspec
def egl_register_recipes() -> list[Component]:
    """Recipe classes or factories, built as ``factory(model, **kwargs)``."""
