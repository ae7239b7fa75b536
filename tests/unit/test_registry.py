"""egl.registry: list and create components by (kind, name), fnmatch filters, clear errors.

Third-party plugins (faked distributions, broken ones) are tested in test_plugins.py.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import types
from typing import Any

import pytest
import torch
from torch import nn

import egl
from egl import cli
from egl.explainers import Explainer

# egl's own components of the kinds that build without a model or data; recipes are
# created through a run-time plugin below (their constructors belong to the recipe tests).
BUILTINS = {
    "explainer": {"grad_cam", "input_gradient", "captum"},
    "masker": {"learned", "grayscale", "ground_truth"},
    "alignment": {"bce", "l1"},
    "regularizer": {"sparsity", "smoothness", "mixup_consistency"},
}
BUILTIN_CASES = [(kind, name) for kind, names in BUILTINS.items() for name in sorted(names)]


def tiny_model() -> nn.Module:
    """A 3-channel CNN with a global-average-pool + linear head (no timm, no download)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def fake_component(kind: str) -> type:
    """A class named ``fake_<kind>`` that records how it was built."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    return type(f"Fake{kind.title()}", (), {"name": f"fake_{kind}", "__init__": __init__})


def one_of_each_plugin() -> types.ModuleType:
    """A run-time plugin registering ``fake_<kind>`` for every kind."""
    mod = types.ModuleType("one_of_each")
    for kind, hook in egl._plugins.KIND_HOOKS.items():
        cls = fake_component(kind)
        setattr(mod, hook, egl.hookimpl(lambda cls=cls: [cls]))
    return mod


# -- listing ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", egl.KINDS)
def test_list_components_is_sorted_names(kind: str) -> None:
    names = egl.list_components(kind)
    assert names == sorted(names)
    assert all(isinstance(n, str) for n in names)
    assert BUILTINS.get(kind, set()) <= set(names)


@pytest.mark.parametrize("kind", sorted(BUILTINS))
@pytest.mark.parametrize("pattern", ["*", "g*", "*a*", "?????", "[bl]*", "nothing*"])
def test_list_components_filters_by_fnmatch(kind: str, pattern: str) -> None:
    everything = egl.list_components(kind)
    assert egl.list_components(kind, pattern) == [n for n in everything if fnmatch.fnmatchcase(n, pattern)]


def test_list_components_examples() -> None:
    assert egl.list_components("explainer", "grad_c*") == ["grad_cam", "grad_cam_plus_plus"]
    assert egl.list_components("explainer", "*_cam") == ["eigen_cam", "grad_cam", "hires_cam", "layer_cam", "score_cam",
                                                     "xgrad_cam"]
    assert egl.list_components("regularizer", "sp*") == ["sparsity"]
    assert egl.list_components("alignment", "b?e") == ["bce"]
    assert egl.list_components("masker", "GRAY*") == []  # case-sensitive, as timm's list_models


@pytest.mark.parametrize("kind", egl.KINDS)
def test_every_kind_lists_and_creates_a_plugin_component(kind: str) -> None:
    egl.register_plugin(one_of_each_plugin(), name="one_of_each")
    assert egl.list_components(kind, "fake_*") == [f"fake_{kind}"]
    obj = egl.create(kind, f"fake_{kind}", 1, key="v")
    assert type(obj).name == f"fake_{kind}"
    assert (obj.args, obj.kwargs) == ((1,), {"key": "v"})
    assert egl.component_source(kind, f"fake_{kind}") == "plugin 'one_of_each' (no distribution)"


def test_list_components_rejects_a_non_string_pattern() -> None:
    with pytest.raises(egl.InputError, match=r"^egl\.list_components: 'pattern' expected an fnmatch string "
                                             r"such as 'grad\*', got \['grad\*'\]\. Pass a string\.$"):
        egl.list_components("explainer", ["grad*"])  # type: ignore[arg-type]


# -- creating -----------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "name"), BUILTIN_CASES)
def test_create_every_builtin_by_name(kind: str, name: str) -> None:
    cls = egl.get_component(kind, name)
    assert cls.name == name
    args = (tiny_model(),) if kind == "explainer" else ()
    obj = egl.create(kind, name, *args)
    assert type(obj) is cls
    assert egl.resolve(kind, name, *args).__class__ is cls
    assert egl.component_source(kind, name).startswith("plugin 'builtins' (egl")


def test_create_passes_arguments_through() -> None:
    assert egl.create("alignment", "bce", reduction="sum").reduction == "sum"
    model = tiny_model()
    explainer = egl.create("explainer", "input_gradient", model, absolute=False)
    assert isinstance(explainer, Explainer)
    assert explainer.model is model and explainer.absolute is False
    sal = explainer(torch.randn(2, 3, 8, 8), [0, 2])
    assert sal.shape == (2, 1, 8, 8)


def test_resolve_returns_a_non_string_spec_unchanged() -> None:
    loss = egl.create("alignment", "l1")
    assert egl.resolve("alignment", loss) is loss


# -- errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "fn"), [
    (lambda: egl.list_components("explainers"), "egl.list_components"),
    (lambda: egl.create("explainers", "grad_cam"), "egl.create"),
    (lambda: egl.get_component("Explainer", "grad_cam"), "egl.get_component"),
    (lambda: egl.component_source("loss", "bce"), "egl.component_source"),
])
def test_invalid_kind_names_the_function_and_the_choices(call: Any, fn: str) -> None:
    with pytest.raises(egl.InputError, match=rf"^{fn}: 'kind' expected one of \['explainer', 'masker', "
                                             r"'alignment', 'regularizer', 'recipe'\], got '\w+'\. Pick one of"):
        call()


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(egl.ComponentNotFoundError,
                       match=r"^egl\.create: 'name' expected a registered explainer name, got 'grad_cma'\. "
                             r"Did you mean 'grad_cam'( or '\w+')*\? Available: (\w+, )*grad_cam, ") as info:
        egl.create("explainer", "grad_cma")
    assert isinstance(info.value, KeyError)  # except KeyError keeps working
    assert not str(info.value).startswith('"')  # no KeyError quoting
    assert "`egl plugins`" in str(info.value)


def test_unknown_name_without_close_match_lists_what_exists() -> None:
    with pytest.raises(egl.ComponentNotFoundError, match=r"got 'zzz'\. Available: (\w+, )*bce, ") as info:
        egl.get_component("alignment", "zzz")
    assert "Did you mean" not in str(info.value)


@pytest.mark.parametrize("name", [3, None, ["bce"]])
def test_non_string_name_is_not_found(name: Any) -> None:
    with pytest.raises(egl.ComponentNotFoundError, match=rf"got {re.escape(repr(name))}\."):
        egl.create("alignment", name)


def test_resolve_and_component_source_name_themselves_in_errors() -> None:
    with pytest.raises(egl.ComponentNotFoundError, match=r"^egl\.resolve: 'name'.*Did you mean 'l1'\?"):
        egl.resolve("alignment", "l2")
    with pytest.raises(egl.ComponentNotFoundError, match=r"^egl\.component_source: 'name'"):
        egl.component_source("masker", "nope")


# -- laziness and reset -------------------------------------------------------------------
def test_importing_egl_loads_no_plugin() -> None:
    code = (
        "import sys, egl, egl._plugins as p\n"
        "assert 'egl._builtins' not in sys.modules, 'egl._builtins imported'\n"
        "assert p._STATE is None, 'plugin manager built'\n"
        "egl.list_components('masker')\n"
        "assert 'egl._builtins' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_manager_is_cached_and_reset_rebuilds_it() -> None:
    pm = egl._plugins.get_plugin_manager()
    assert egl._plugins.get_plugin_manager() is pm
    assert pm.has_plugin("builtins")
    egl.register_plugin(one_of_each_plugin(), name="one_of_each")
    assert "fake_masker" in egl.list_components("masker")
    egl.reset_plugins()
    assert egl._plugins.get_plugin_manager() is not pm
    assert "fake_masker" not in egl.list_components("masker")
    assert BUILTINS["masker"] <= set(egl.list_components("masker"))


# -- `egl list` -----------------------------------------------------------------------------
def test_cli_list_prints_every_kind_with_its_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in egl.KINDS:
        assert f"\n{kind} (" in f"\n{out}"
    assert "grad_cam" in out and "plugin 'builtins' (egl" in out
    lines = out.splitlines()
    summary = lines[lines.index(next(line for line in lines if line.split()[:1] == ["grad_cam"])) + 1]
    assert summary.strip() == "Grad-CAM bound to a model and a target layer"  # the docstring's first sentence
    assert ":class:" not in out and "``" not in out  # markup stripped


def test_cli_list_filters_by_kind_and_pattern(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list", "regularizer", "s[mp]*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = egl.list_components("regularizer", "s[mp]*")
    assert {"smoothness", "sparsity"} <= set(expected)
    assert lines[0] == f"regularizer ({len(expected)}):"
    assert [line.split()[0] for line in lines[1:] if not line.startswith(" " * 5)] == expected


def test_cli_list_rejects_an_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["list", "explainers"])
    assert info.value.code == 2
    assert "invalid choice: 'explainers'" in capsys.readouterr().err


def test_create_names_arguments_the_component_does_not_take() -> None:
    """Not a TypeError from a base class's __init__: the component, its signature and what arrived."""
    with pytest.raises(egl.InputError, match=r"egl.create: 'args' expected the arguments of masker 'grayscale' "
                                             r"\(rescale: 'str' = 'minmax'\), got \(foo=1\): got an unexpected "
                                             r"keyword argument 'foo'"):
        egl.create("masker", "grayscale", foo=1)
    with pytest.raises(egl.InputError, match=r"explainer 'grad_cam' \(model: .*missing a required argument: 'model'"):
        egl.create("explainer", "grad_cam")
    with pytest.raises(egl.InputError, match=r"egl.resolve: 'args' expected the arguments of masker 'grayscale'"):
        egl.resolve("masker", "grayscale", 1, 2)
    assert egl.create("masker", "grayscale", rescale="minmax") is not None


def test_resolve_takes_a_name_and_kwargs_dict_as_a_yaml_config_writes_it() -> None:
    import egl

    loss = egl.resolve("alignment", {"name": "bce", "kwargs": {"eps": 1e-3}})
    assert type(loss).__name__ == "BCEAlignmentLoss" and loss.eps == 1e-3
    assert egl.resolve("alignment", {"name": "l1"}).reduction == "mean"  # kwargs may be left out
    assert egl.resolve("regularizer", {"name": "sparsity", "kwargs": {}}, reduction="sum").reduction == "sum"
    assert egl.resolve("regularizer", {"name": "sparsity", "kwargs": {"reduction": "sum"}}, reduction="mean"
                       ).reduction == "sum"  # the dict's own arguments win
    for bad in ({"nam": "bce"}, {"name": "bce", "eps": 1e-3}, {"name": "bce", "kwargs": [1]}):
        with pytest.raises(egl.InputError, match=r"'alignment' expected a registered alignment name, an instance, "
                                                 r"or a dict \{name: \.\.\., kwargs: \{\.\.\.\}\}.*under 'kwargs'"):
            egl.resolve("alignment", bad)
    with pytest.raises(egl.InputError, match="Did you mean 'eps'"):
        egl.resolve("alignment", {"name": "bce", "kwargs": {"epsilon": 1e-3}})
