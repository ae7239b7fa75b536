"""A template egl plugin: the ``gradient_x_input`` explainer.

Installing this distribution is all it takes: egl finds it through the ``egl``
entry-point group, so ``egl.create("explainer", "gradient_x_input", model)`` works
without importing this package.
"""

from egl_plugin_template.gradient_x_input import GradientXInput, gradient_x_input

__all__ = ["GradientXInput", "gradient_x_input"]
__version__ = "0.1.0"
