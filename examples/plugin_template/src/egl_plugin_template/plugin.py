"""The module named by the entry point: one ``@egl.hookimpl`` function per hook used.

Keep it cheap to import: egl imports it when its plugin manager is built. Import the
components inside the hook functions, as egl's own ``egl/_builtins.py`` does.
"""

from __future__ import annotations

from typing import Any

import egl


@egl.hookimpl
def egl_register_explainers() -> list[Any]:
    from egl_plugin_template.gradient_x_input import GradientXInput

    return [GradientXInput]
