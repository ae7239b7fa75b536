"""Recipes (ALIGN and the baselines) compose explainers, maskers, losses and regularizers.

None ships yet: the recipes issue adds ``recipes.align(model)`` and the baselines. The
``recipe`` registry kind and the ``egl_register_recipes`` hook already exist, so a plugin
can register one today.
"""

__all__: list[str] = []
