"""egl._plugins: third-party plugins found through entry points, and the ones that break.

Distributions are faked by monkeypatching ``egl._plugins._entry_points`` (as pluggy's own
tests fake ``importlib.metadata``); ``tests/integration/test_plugin_template.py``
installs a real one.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import egl
from egl import _plugins, cli
from egl._plugins import EGLPluginWarning


# -- fakes --------------------------------------------------------------------------------
@dataclass
class FakeDist:
    name: str
    version: str


@dataclass
class FakeEntryPoint:
    """What egl reads of an ``importlib.metadata.EntryPoint``."""

    name: str
    target: Any  # the plugin object, or an exception that importing it raises
    dist: FakeDist | None = None
    value: str = ""
    loads: int = 0

    def __post_init__(self) -> None:
        self.value = self.value or f"fake_{self.name}.plugin"

    def load(self) -> Any:
        self.loads += 1
        if isinstance(self.target, BaseException):
            raise self.target
        return self.target


def component(name: Any, *, attrs: dict[str, Any] | None = None) -> type:
    """A component class carrying ``name`` (None: no name attribute at all)."""
    body = {} if name is None else {"name": name}
    return type("Fake", (), {**body, **(attrs or {})})


def plugin(module: str = "fake_plugin", **hooks: Callable[[], Any]) -> types.ModuleType:
    """A plugin module with one ``@egl.hookimpl`` function per keyword (hook name -> body)."""
    mod = types.ModuleType(module)
    for hook, body in hooks.items():
        setattr(mod, hook, egl.hookimpl(body))
    return mod


def explainers(*classes: Any) -> types.ModuleType:
    return plugin(egl_register_explainers=lambda: list(classes))


@pytest.fixture
def entry_points(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``entry_points(ep, ...)``: egl sees its own entry point plus these, nothing else installed."""
    builtins = [ep for ep in _plugins._entry_points() if ep.name == _plugins.BUILTIN_PLUGIN]

    def install(*fakes: FakeEntryPoint) -> None:
        monkeypatch.setattr(_plugins, "_entry_points", lambda: [*builtins, *fakes])
        egl.reset_plugins()

    return install


@pytest.fixture
def no_plugin_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error", EGLPluginWarning)
        yield


def report() -> dict[str, egl.PluginInfo]:
    return {p.name: p for p in egl.plugin_report()}


def broken() -> FakeEntryPoint:
    return FakeEntryPoint("broken", ImportError("boom"), FakeDist("egl-broken", "1.2"))


# -- a healthy third-party plugin -----------------------------------------------------------
def test_a_third_party_plugin_adds_components(entry_points: Any, no_plugin_warnings: None) -> None:
    cls = component("third_party")
    entry_points(FakeEntryPoint("extra", explainers(cls), FakeDist("egl-extra", "2.0")))
    assert egl.get_component("explainer", "third_party") is cls
    assert "grad_cam" in egl.list_components("explainer")
    assert egl.component_source("explainer", "third_party") == "plugin 'extra' (egl-extra 2.0)"
    assert report()["extra"] == egl.PluginInfo("extra", "egl-extra", "2.0", "loaded")
    assert [p.name for p in egl.plugin_report()][0] == "builtins"


def test_factories_are_named_by_their_function_name(entry_points: Any, no_plugin_warnings: None) -> None:
    def my_recipe(model: Any) -> tuple[str, Any]:
        return ("built", model)

    entry_points(FakeEntryPoint("extra", plugin(egl_register_recipes=lambda: [my_recipe])))
    assert egl.create("recipe", "my_recipe", 7) == ("built", 7)
    assert egl.component_source("recipe", "my_recipe") == "plugin 'extra' (no distribution)"


def test_a_hook_returning_none_registers_nothing(entry_points: Any, no_plugin_warnings: None) -> None:
    entry_points(FakeEntryPoint("quiet", plugin(egl_register_maskers=lambda: None)))
    assert report()["quiet"].status == "loaded"


# -- a plugin that fails to import ---------------------------------------------------------
def test_an_import_error_warns_naming_plugin_and_distribution(entry_points: Any) -> None:
    entry_points(broken())
    with pytest.warns(EGLPluginWarning, match=r"^egl: plugin 'broken' \(egl-broken 1\.2\) failed to load and "
                                              r"was skipped: ImportError: boom\. Set EGL_DISABLE_PLUGINS=broken"):
        names = egl.list_components("explainer")
    assert "grad_cam" in names  # egl still works
    assert egl.create("alignment", "bce").reduction == "mean"
    info = report()["broken"]
    assert (info.status, info.distribution, info.version) == ("failed", "egl-broken", "1.2")
    assert info.error == "failed to load: ImportError: boom"



def test_a_plugin_that_exits_at_import_is_skipped_not_obeyed(entry_points: Any) -> None:
    """A plugin calling sys.exit() at import made every registry call raise SystemExit."""
    entry_points(FakeEntryPoint("exits", SystemExit(3), FakeDist("egl-exits", "0.1")))
    with pytest.warns(EGLPluginWarning, match=r"plugin 'exits' \(egl-exits 0\.1\) failed to load .*SystemExit"):
        assert "grad_cam" in egl.list_components("explainer")
    assert report()["exits"].status == "failed"
    entry_points(FakeEntryPoint("stop", KeyboardInterrupt(), FakeDist("egl-stop", "0.1")))
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C still stops the program
        egl.list_components("explainer")

def test_strict_mode_turns_the_failure_into_an_error(entry_points: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_STRICT_PLUGINS", "1")
    entry_points(broken())
    for _ in range(2):  # a failed build is not cached: the next call fails the same way
        with pytest.raises(egl.PluginError, match=r"^egl: 'broken' expected a plugin that loads and registers "
                                                  r"valid components, got plugin 'broken' \(egl-broken 1\.2\), "
                                                  r"which failed to load: ImportError: boom\. .*EGL_DISABLE_PLUGINS"
                                                  r"=broken") as info:
            egl.list_components("explainer")
        assert isinstance(info.value.__cause__, ImportError)
    assert _plugins._STATE is None


@pytest.mark.parametrize("value", ["0", "", "no"])
def test_strict_mode_needs_a_true_value(entry_points: Any, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("EGL_STRICT_PLUGINS", value)
    entry_points(broken())
    with pytest.warns(EGLPluginWarning):
        egl.list_components("explainer")


def test_disabled_plugins_are_skipped_without_importing(entry_points: Any, monkeypatch: pytest.MonkeyPatch,
                                                        no_plugin_warnings: None) -> None:
    monkeypatch.setenv("EGL_DISABLE_PLUGINS", " other , broken")
    ep = broken()
    healthy = FakeEntryPoint("healthy", explainers(component("healthy_one")))
    entry_points(ep, healthy)
    assert "healthy_one" in egl.list_components("explainer")
    assert ep.loads == 0
    assert report()["broken"] == egl.PluginInfo("broken", "egl-broken", "1.2", "disabled")
    monkeypatch.setenv("EGL_STRICT_PLUGINS", "1")  # nothing left to be strict about
    egl.reset_plugins()
    assert report()["broken"].status == "disabled"


def test_egl_own_plugin_cannot_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_DISABLE_PLUGINS", "builtins")
    assert "grad_cam" in egl.list_components("explainer")


def test_the_warning_is_issued_once_per_manager_build(entry_points: Any) -> None:
    entry_points(broken())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count what egl emits, not what Python's filters let through
        for kind in egl.KINDS:
            egl.list_components(kind)
        egl.plugin_report()
        egl.create("alignment", "l1")
        assert [w.category for w in caught] == [EGLPluginWarning]
        egl.reset_plugins()
        egl.list_components("masker")
        assert [w.category for w in caught] == [EGLPluginWarning] * 2


# -- a plugin that registers something invalid ---------------------------------------------
BAD_HOOKS = {
    "no name": (lambda: [component(None)], r"'name' expected a lowercase identifier string on .*, got None"),
    "bad name": (lambda: [component("Bad Name")], r"'name' expected a lowercase identifier string on .*, "
                                                  r"got 'Bad Name'"),
    "not callable": (lambda: [42], r"'component' expected a class or factory callable, got int 42"),
    "a name, not a class": (lambda: ["fine"], r"'component' expected a class or factory callable, got str 'fine'"),
    "not a list": (lambda: component("lonely"), r"'return value' expected a list of component classes, got type"),
    "hook raises": (lambda: 1 / 0, r"raised in egl_register_explainers\(\) and was skipped: ZeroDivisionError"),
}


@pytest.mark.parametrize("case", list(BAD_HOOKS))
def test_an_invalid_component_skips_the_whole_plugin(entry_points: Any, case: str) -> None:
    hook, message = BAD_HOOKS[case]
    good_masker = component("good_masker")
    bad = plugin(egl_register_explainers=hook, egl_register_maskers=lambda: [good_masker])
    entry_points(FakeEntryPoint("bad", bad, FakeDist("egl-bad", "0.1")))
    with pytest.warns(EGLPluginWarning, match=r"^egl: plugin 'bad' \(egl-bad 0\.1\) .*" + message):
        masks = egl.list_components("masker")  # asked first: the plugin is still skipped whole
    assert "good_masker" not in masks
    assert "grad_cam" in egl.list_components("explainer")
    assert report()["bad"].status == "failed"
    assert not _plugins.get_plugin_manager().has_plugin("bad")


def test_an_invalid_component_raises_in_strict_mode(entry_points: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_STRICT_PLUGINS", "true")
    entry_points(FakeEntryPoint("bad", explainers(component(None)), FakeDist("egl-bad", "0.1")))
    with pytest.raises(egl.PluginError, match=r"^egl: 'bad' expected .*, which registered an invalid "
                                              r"component: egl_register_explainers\(\): 'name' expected"):
        egl.list_components("masker")


@pytest.mark.parametrize(("hooks", "message"), [
    ({"egl_register_explainer": lambda: []}, r"it implements egl_register_explainer, which egl does not define"),
    ({"egl_register_explainers": lambda model: []}, r"PluginValidationError: .*\bmodel\b"),
])
def test_hooks_egl_does_not_define_fail_to_load(entry_points: Any, hooks: dict[str, Any], message: str) -> None:
    entry_points(FakeEntryPoint("typo", plugin(**hooks), FakeDist("egl-typo", "1.0")))
    with pytest.warns(EGLPluginWarning, match=r"plugin 'typo' \(egl-typo 1\.0\) failed to load .*" + message):
        egl.list_components("explainer")
    assert report()["typo"].status == "failed"


def test_an_entry_point_resolving_to_none_fails_to_load(entry_points: Any) -> None:
    entry_points(FakeEntryPoint("empty", None, FakeDist("egl-empty", "1.0")))
    with pytest.warns(EGLPluginWarning, match=r"plugin 'empty' \(egl-empty 1\.0\) failed to load .*object is None"):
        egl.list_components("explainer")
    assert report()["empty"].status == "failed"


# -- duplicate names ---------------------------------------------------------------------------
def test_a_duplicate_of_a_builtin_leaves_the_builtin(entry_points: Any) -> None:
    impostor = component("grad_cam")
    entry_points(FakeEntryPoint("dup", explainers(impostor, component("dup_extra")), FakeDist("egl-dup", "0.3")))
    with pytest.warns(EGLPluginWarning, match=r"plugin 'dup' \(egl-dup 0\.3\) registered a duplicate component "
                                              r"and was skipped: egl: 'grad_cam' expected a unique explainer name, "
                                              r"got it from plugin 'builtins' \(egl [^)]*\) and from plugin 'dup' "
                                              r"\(egl-dup 0\.3\)\. Rename"):
        cls = egl.get_component("explainer", "grad_cam")
    assert cls is not impostor
    assert egl.component_source("explainer", "grad_cam").startswith("plugin 'builtins' (egl")
    assert "dup_extra" not in egl.list_components("explainer")
    assert report()["dup"].status == "failed"


def test_a_duplicate_raises_in_strict_mode(entry_points: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_STRICT_PLUGINS", "1")
    entry_points(FakeEntryPoint("dup", explainers(component("grad_cam")), FakeDist("egl-dup", "0.3")))
    with pytest.raises(egl.DuplicateComponentError, match=r"'grad_cam' expected a unique explainer name, got it "
                                                          r"from plugin 'builtins' .* and from plugin 'dup'"):
        egl.list_components("masker")


def test_two_plugins_with_the_same_new_name_keep_the_first(entry_points: Any) -> None:
    first, second = component("shared"), component("shared")
    entry_points(FakeEntryPoint("first", explainers(first), FakeDist("egl-first", "1.0")),
                 FakeEntryPoint("second", explainers(second), FakeDist("egl-second", "2.0")))
    with pytest.warns(EGLPluginWarning, match=r"from plugin 'first' \(egl-first 1\.0\) and from plugin "
                                              r"'second' \(egl-second 2\.0\)\. .*EGL_DISABLE_PLUGINS=second"):
        assert egl.get_component("explainer", "shared") is first
    assert (report()["first"].status, report()["second"].status) == ("loaded", "failed")


def test_one_plugin_registering_a_name_twice_is_skipped(entry_points: Any) -> None:
    entry_points(FakeEntryPoint("twice", explainers(component("again"), component("again"))))
    with pytest.warns(EGLPluginWarning, match=r"'again' expected a unique explainer name, got it from plugin "
                                              r"'twice' \(no distribution\) and from plugin 'twice'"):
        assert "again" not in egl.list_components("explainer")


def test_the_same_name_in_two_kinds_is_fine(entry_points: Any, no_plugin_warnings: None) -> None:
    entry_points(FakeEntryPoint("both", plugin(egl_register_maskers=lambda: [component("grad_cam")])))
    assert "grad_cam" in egl.list_components("masker")


def test_two_distributions_with_one_entry_point_name(entry_points: Any) -> None:
    entry_points(FakeEntryPoint("same", explainers(component("from_a")), FakeDist("egl-a", "1")),
                 FakeEntryPoint("same", explainers(component("from_b")), FakeDist("egl-b", "1")))
    with pytest.warns(EGLPluginWarning, match=r"plugin 'same' \(egl-b 1\) failed to load .* already used by "
                                              r"plugin 'same' \(egl-a 1\)"):
        names = egl.list_components("explainer")
    assert "from_a" in names and "from_b" not in names
    assert sorted((p.distribution, p.status) for p in egl.plugin_report() if p.name == "same") == [
        ("egl-a", "loaded"), ("egl-b", "failed")]


def test_a_third_party_entry_point_named_builtins_is_refused(entry_points: Any) -> None:
    entry_points(FakeEntryPoint("builtins", explainers(component("sneaky")), FakeDist("egl-sneaky", "1")))
    with pytest.warns(EGLPluginWarning, match=r"'builtins' is reserved for egl's own components"):
        names = egl.list_components("explainer")
    assert "sneaky" not in names and "grad_cam" in names


# -- plugins registered at run time ---------------------------------------------------------
def test_register_plugin_makes_a_component_creatable(no_plugin_warnings: None) -> None:
    cls = component("runtime_one", attrs={"__init__": lambda self, x: setattr(self, "x", x)})
    assert egl.register_plugin(explainers(cls), name="runtime") == "runtime"
    assert egl.create("explainer", "runtime_one", 5).x == 5
    assert report()["runtime"] == egl.PluginInfo("runtime", None, None, "loaded")
    egl.unregister_plugin("runtime")
    assert "runtime_one" not in egl.list_components("explainer")
    assert "runtime" not in report()


def test_register_plugin_raises_on_a_duplicate_and_leaves_nothing_behind() -> None:
    with pytest.raises(egl.DuplicateComponentError, match=r"^egl\.register_plugin: 'grad_cam' expected a unique "
                                                          r"explainer name, got it from plugin 'builtins' \(egl .*\) "
                                                          r"and from plugin 'dup' \(no distribution\)\. Rename"):
        egl.register_plugin(explainers(component("grad_cam"), component("dup_extra")), name="dup")
    assert "dup" not in report()
    assert "dup_extra" not in egl.list_components("explainer")
    assert egl.register_plugin(explainers(component("dup_extra")), name="dup") == "dup"


@pytest.mark.parametrize(("bad", "message"), [
    (explainers(component(None)), r"which registered an invalid component: egl_register_explainers\(\): 'name'"),
    (plugin(egl_register_maskers=lambda: {}), r"'return value' expected a list of component classes, got dict"),
    (plugin(egl_register_recipes=lambda: 1 / 0), r"which raised in egl_register_recipes\(\): ZeroDivisionError"),
    (plugin(egl_register_masker=lambda: []), r"it implements egl_register_masker, which egl does not define"),
    (types.SimpleNamespace(egl_register_maskers=lambda: []),  # no @egl.hookimpl: pluggy would skip it silently
     r"it defines egl_register_maskers without the @egl.hookimpl marker"),
])
def test_register_plugin_raises_on_an_invalid_plugin(bad: Any, message: str) -> None:
    with pytest.raises(egl.PluginError, match=r"^egl\.register_plugin: 'plugin' expected .*" + message):
        egl.register_plugin(bad, name="bad")
    assert "bad" not in report()


def test_register_plugin_refuses_a_taken_name_or_object() -> None:
    mod = explainers(component("taken"))
    egl.register_plugin(mod, name="taken")
    with pytest.raises(egl.PluginError, match=r"^egl\.register_plugin: 'name' expected a name no other plugin "
                                              r"uses, got 'taken'\. .*unregister_plugin\('taken'\)"):
        egl.register_plugin(explainers(), name="taken")
    with pytest.raises(egl.PluginError, match=r"^egl\.register_plugin: 'plugin' expected an object not registered "
                                              r"yet, got .*already registered as 'taken'"):
        egl.register_plugin(mod, name="again")
    with pytest.raises(egl.PluginError, match=r"'name' expected a name no other plugin uses, got 'builtins'"):
        egl.register_plugin(explainers(), name="builtins")


@pytest.mark.parametrize("name", ["", 3])
def test_register_plugin_checks_the_name(name: Any) -> None:
    with pytest.raises(egl.InputError, match=r"^egl\.register_plugin: 'name' expected None or a non-empty string"):
        egl.register_plugin(explainers(), name=name)


def test_register_plugin_is_not_blamed_for_a_broken_entry_point(entry_points: Any) -> None:
    entry_points(FakeEntryPoint("bad", plugin(egl_register_maskers=lambda: [42])))
    with pytest.warns(EGLPluginWarning):
        egl.list_components("explainer")
    egl.register_plugin(explainers(component("innocent")), name="innocent")
    assert "innocent" in egl.list_components("explainer")


@pytest.mark.parametrize("name", ["builtins", "never_registered", None])
def test_unregister_plugin_refuses_egl_and_unknown_names(name: Any) -> None:
    with pytest.raises(egl.InputError, match=r"^egl\.unregister_plugin: 'name' expected the name of a loaded "
                                             r"plugin other than egl's own, got"):
        egl.unregister_plugin(name)
    assert "grad_cam" in egl.list_components("explainer")


# -- `egl plugins` ---------------------------------------------------------------------------
def test_cli_plugins_lists_loaded_plugins(entry_points: Any, capsys: pytest.CaptureFixture[str]) -> None:
    entry_points(FakeEntryPoint("extra", explainers(component("x_one")), FakeDist("egl-extra", "2.0")))
    assert cli.main(["plugins"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["plugin", "status", "distribution", "error"]
    assert rows[1][:3] == ["builtins", "loaded", "egl"]
    assert rows[2] == ["extra", "loaded", "egl-extra", "2.0"]


def test_cli_plugins_exits_1_when_a_plugin_failed(entry_points: Any, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EGL_DISABLE_PLUGINS", "off")
    entry_points(broken(), FakeEntryPoint("off", explainers()))
    with pytest.warns(EGLPluginWarning):
        assert cli.main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "broken               failed    egl-broken 1.2" in out
    assert "failed to load: ImportError: boom" in out
    assert "off                  disabled" in out


def test_cli_reports_strict_mode_errors_without_a_traceback(entry_points: Any, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("EGL_STRICT_PLUGINS", "1")
    entry_points(broken())
    assert cli.main(["list", "explainer"]) == 1
    assert cli.main(["plugins"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("egl: error: egl: 'broken' expected a plugin that loads")


def test_a_helper_named_egl_something_is_not_taken_for_an_unmarked_hook() -> None:
    plugin = types.SimpleNamespace(egl_helper=lambda: None)  # not a hook name: not the plugin's business
    assert egl.register_plugin(plugin, name="helper_only") == "helper_only"
    egl.unregister_plugin("helper_only")


def test_components_of_another_kind_instances_and_inherited_names_are_named() -> None:
    from egl.losses.base import AlignmentLoss
    from egl.recipes import ALIGN

    class KL2(AlignmentLoss):
        name = "kl2"

        def forward(self, saliency, mask):
            return (saliency - mask).abs().mean()

    class MyAlign(ALIGN):  # (inherits name = "align")
        pass

    cases = [("egl_register_maskers", [KL2], r"expected a masker class, got KL2, an alignment \(it subclasses "
                                              r"AlignmentLoss\)\. Return it from egl_register_alignment_losses"),
             ("egl_register_alignment_losses", [KL2()], r"expected a class or factory callable, got KL2 .*Return the "
                                                         r"class itself \(egl builds the instances\)"),
             ("egl_register_recipes", [MyAlign], r"'align' expected a unique recipe name, got it from plugin "
                                                 r"'builtins'.*\(inherited: give MyAlign a name of its own\) \(egl's "
                                                 r"own names cannot be replaced\)")]
    for hook, items, message in cases:
        plugin = type("P", (), {hook: staticmethod(egl.hookimpl(lambda items=items: items))})
        # (pluggy reads the hook's name from the attribute: a staticmethod of the right name)
        with pytest.raises(egl.EGLError, match=message):
            egl.register_plugin(plugin(), f"p_{hook}")
        egl.reset_plugins()
