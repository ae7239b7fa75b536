"""egl's contract checks over this plugin's explainer (``pip install -e . && pytest``).

Looking the explainer up by its registered name also checks that egl finds the plugin through
its entry point. Each check is its own test case, so a failure names the check.
"""

import pytest
from egl import testing


@pytest.mark.parametrize("check", testing.checks("explainer"))
def test_gradient_x_input_keeps_egls_explainer_contract(check: str) -> None:
    testing.check_component("explainer", "gradient_x_input", only=check)
