"""Every Python example in README.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace (a page builds on its earlier blocks),
in a fresh working directory. Two rules shrink them to test size: ``steps=N`` becomes
``steps=2``, and a comment on the line before a block can adjust that block:

* ``<!-- test: replace OLD => NEW -->`` (e.g. a hand-written loop's ``range(3000)``);
* ``<!-- test: needs MODULE -->``: skipped (with the reason) when MODULE is not installed;
* ``<!-- test: skip REASON -->``: not run (data or weights that cannot ship: a SAM checkpoint,
  a data set folder, a ``torchrun`` script).
"""

from __future__ import annotations

import importlib.util
import os
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"(?:^<!-- test: (?P<cmd>[^\n]*?) -->\n)?^```python\n(?P<code>.*?)^```", re.S | re.M)
_DIRECTIVE = re.compile(r"^<!-- test: .*$", re.M)


def blocks(text: str) -> list[tuple[str | None, str]]:
    """``(directive or None, code)`` of every Python block of a page; a directive must sit on the
    line right above a Python block."""
    found = [(m.group("cmd"), m.group("code")) for m in _BLOCK.finditer(text)]
    attached = sum(cmd is not None for cmd, _ in found)
    if attached != len(_DIRECTIVE.findall(text)):
        raise AssertionError("a '<!-- test: ... -->' directive is not on the line right above a ```python block")
    return found


def prepare(cmd: str | None, code: str) -> tuple[str | None, str]:
    """``(reason to skip or None, code to run)``."""
    code = re.sub(r"\bsteps=\d+", "steps=2", code)
    if cmd is None:
        return None, code
    if cmd.startswith("skip"):
        return cmd[4:].strip() or "marked skip", code
    if cmd.startswith("needs "):
        mod = cmd[6:].strip()
        return (None if importlib.util.find_spec(mod) else f"needs {mod}"), code
    if cmd.startswith("replace "):
        old, new = (s.strip() for s in cmd[8:].split("=>"))
        if old not in code:
            raise AssertionError(f"'test: replace' names {old!r}, which the block does not contain")
        return None, code.replace(old, new)
    raise AssertionError(f"unknown test directive {cmd!r}")


def test_directives_are_read() -> None:
    page = ("text\n<!-- test: skip needs a checkpoint -->\n```python\na = 1\n```\n```python\nfit(steps=500)\n```\n"
            "<!-- test: replace range(9) => range(1) -->\n```python\nfor i in range(9): pass\n```\n```bash\nls\n```\n")
    got = [prepare(c, code) for c, code in blocks(page)]
    assert got == [("needs a checkpoint", "a = 1\n"), (None, "fit(steps=2)\n"), (None, "for i in range(1): pass\n")]
    with pytest.raises(AssertionError, match="does not contain"):
        prepare("replace nowhere => here", "a = 1\n")
    with pytest.raises(AssertionError, match="right above"):  # a blank line between: it would apply to nothing
        blocks("<!-- test: skip x -->\n\n```python\na = 1\n```\n")


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p.read_text())], ids=lambda p: p.name)
def test_the_examples_of_a_page_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EGL_SAM_WEIGHTS", raising=False)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    skipped = []
    for i, (cmd, code) in enumerate(blocks(page.read_text())):
        reason, code = prepare(cmd, code)
        if reason is not None:
            skipped.append(f"block {i}: {reason}")
            continue
        try:
            exec(compile(code, f"{page.name}[{i}]", "exec"), namespace)  # noqa: S102 - the docs' own examples
        except Exception as e:  # noqa: BLE001 - re-raised with the block named
            raise AssertionError(f"{page.relative_to(ROOT)}, Python block {i} failed: {type(e).__name__}: {e}") from e
    if skipped:
        warnings.warn(f"{page.name}: not run: " + "; ".join(skipped), stacklevel=1)
    assert os.getcwd() == str(tmp_path)  # (examples write their runs/ here)
