"""examples/plugin_template, really pip-installed: egl finds it through its entry point.

The template is copied first, so the build leaves no ``build/`` or ``*.egg-info`` in the
repository, and installed with ``--target`` into a temporary folder put on ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _helpers import make_model

import egl
import egl.testing
from egl import cli
from egl.explainers import Explainer, minmax_normalize

TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "plugin_template"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed ``egl-plugin-template`` distribution."""
    root = tmp_path_factory.mktemp("plugin_template")
    src, target = root / "src", root / "site"
    shutil.copytree(TEMPLATE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--quiet", "--target", str(target), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"pip failed:\n{done.stdout}\n{done.stderr}"
    assert (target / "egl_plugin_template" / "py.typed").is_file()
    return target


@pytest.fixture
def installed(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The template importable and visible to importlib.metadata, for this test only."""
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    egl.reset_plugins()
    yield
    for mod in [m for m in sys.modules if m == "egl_plugin_template" or m.startswith("egl_plugin_template.")]:
        del sys.modules[mod]


def test_the_template_is_listed_with_its_distribution(installed: None) -> None:
    assert "gradient_x_input" in egl.list_components("explainer")
    assert egl.list_components("explainer", "gradient_*") == ["gradient_x_input"]
    assert egl.component_source("explainer", "gradient_x_input") == "plugin 'template' (egl-plugin-template 0.1.0)"
    info = {p.name: p for p in egl.plugin_report()}["template"]
    assert info == egl.PluginInfo("template", "egl-plugin-template", "0.1.0", "loaded")


def test_the_template_explainer_runs_on_a_timm_model(installed: None, images: torch.Tensor) -> None:
    model = make_model("test_resnet")
    explainer = egl.create("explainer", "gradient_x_input", model)
    assert isinstance(explainer, Explainer)
    sal = explainer(images, [0, 1, 2, 3])
    assert sal.shape == (4, 1, 64, 64)
    assert sal.dtype == images.dtype and not sal.requires_grad
    assert float(sal.min()) >= 0.0 and float(sal.max()) <= 1.0
    assert torch.allclose(sal.amax(dim=(1, 2, 3)), torch.ones(4))
    assert not model.training  # the explainer left the mode alone

    # |x * d logit_y / dx| summed over channels, then min-max
    x = images.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits[torch.arange(4), torch.tensor([0, 1, 2, 3])].sum(), x)
    expected = minmax_normalize((grad * images).abs().sum(dim=1, keepdim=True))
    torch.testing.assert_close(sal, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_the_template_explainer_is_differentiable_when_asked(installed: None, images: torch.Tensor,
                                                             arch: str) -> None:
    model = make_model(arch, eval_mode=False)
    explainer = egl.create("explainer", "gradient_x_input", model, normalize=False)
    sal = explainer(images[:2], 1, create_graph=True)
    assert sal.requires_grad and model.training
    sal.mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)


def test_the_templates_own_contract_tests_pass(installed: None) -> None:
    """The test file the template ships runs egl.testing's checks on its explainer: they pass."""
    spec = importlib.util.spec_from_file_location("template_contract", TEMPLATE / "tests" / "test_contract.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    for check in egl.testing.checks("explainer"):
        module.test_gradient_x_input_keeps_egls_explainer_contract(check)


def test_egl_cli_sees_the_template(installed: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "explainer", "gradient*"]) == 0
    assert "gradient_x_input         plugin 'template' (egl-plugin-template 0.1.0)" in capsys.readouterr().out
    assert cli.main(["plugins"]) == 0
    assert any(line.split()[:4] == ["template", "loaded", "egl-plugin-template", "0.1.0"]
               for line in capsys.readouterr().out.splitlines())


def test_the_template_can_be_disabled(installed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_DISABLE_PLUGINS", "template")
    egl.reset_plugins()
    assert "gradient_x_input" not in egl.list_components("explainer")
    assert {p.name: p.status for p in egl.plugin_report()}["template"] == "disabled"
    assert "egl_plugin_template" not in sys.modules


def test_without_the_install_the_name_is_unknown() -> None:
    with pytest.raises(egl.ComponentNotFoundError, match=r"got 'gradient_x_input'\..*`egl plugins`"):
        egl.create("explainer", "gradient_x_input", make_model("test_resnet"))
