"""Command line: ``egl list``, ``egl plugins``, and the experiment commands ``demo``,
``experiment``, ``train``, ``eval``, ``explain``, ``sanity``, ``compare`` (see :mod:`egl.experiments.commands`)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _summary(obj: object, width: int = 78) -> str:
    """The first sentence of ``obj``'s docstring (its class's for an instance), cut to ``width``."""
    import inspect

    doc = inspect.getdoc(obj if callable(obj) or inspect.isclass(obj) else type(obj)) or ""
    first = " ".join(doc.split("\n\n")[0].split())
    first = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", first).replace("``", "")  # :class:`~a.B` -> B
    first = re.split(r"(?<=[a-z)])[.;] ", first)[0].rstrip(".")
    return first if len(first) <= width else first[:width - 1].rstrip() + "…"


def _cmd_list(args: argparse.Namespace) -> int:
    from egl.registry import KINDS, component_source, get_component, list_components

    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        names = list_components(kind, args.pattern)
        print(f"{kind} ({len(names)}):")
        for n in names:
            print(f"  {n:<24} {component_source(kind, n)}")
            summary = _summary(get_component(kind, n))
            if summary:
                print(f"  {'':<24}   {summary}")
    return 0


def _cmd_plugins(_args: argparse.Namespace) -> int:
    from egl._plugins import plugin_report

    report = plugin_report()
    print(f"{'plugin':<20} {'status':<9} {'distribution':<28} error")
    for p in report:
        dist = f"{p.distribution or '-'} {p.version or ''}".strip()
        print(f"{p.name:<20} {p.status:<9} {dist:<28} {p.error or ''}")
    return 1 if any(p.status == "failed" for p in report) else 0


def _register_modules(modules: Sequence[str]) -> None:
    """``egl -p MODULE``: import each module (from the current folder too) and register it."""
    import importlib
    import os

    from egl._check import fail
    from egl._plugins import register_plugin

    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # (as python -m does: a plugin module beside the config)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise fail("egl", "--plugin", "an importable module holding @egl.hookimpl functions",
                       f"{name!r} ({type(exc).__name__}: {exc})",
                       "Check the module's name and that its folder is the current one or on PYTHONPATH") from exc
        register_plugin(module, name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``egl`` command."""
    from egl import __version__
    from egl.errors import EGLError
    from egl.registry import KINDS

    parser = argparse.ArgumentParser(prog="egl", description="Explanation-guided learning toolkit.")
    parser.add_argument("--version", action="version", version=f"egl {__version__}")
    parser.add_argument("-p", "--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE and register it as a plugin (its @egl.hookimpl functions) before the "
                        "command: a plugin that is not installed with an entry point (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list registered components")
    p_list.add_argument("kind", nargs="?", choices=KINDS)
    p_list.add_argument("pattern", nargs="?", default="*")
    p_list.set_defaults(func=_cmd_list)
    p_plug = sub.add_parser("plugins", help="show loaded, failed and disabled plugins (exit 1 if any failed)")
    p_plug.set_defaults(func=_cmd_plugins)
    from egl.experiments.commands import add_commands

    add_commands(sub)
    args = parser.parse_args(argv)
    try:
        _register_modules(args.plugin)
        return int(args.func(args))
    except EGLError as exc:  # strict plugin mode, a broken plugin: a message, not a traceback
        print(f"egl: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
