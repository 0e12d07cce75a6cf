"""The public API a tap may use: `tinspect` and `tinspect.taplib`, and the built-in taps keep to it."""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO

PUBLIC = ("tinspect", "tinspect.taplib")
TAPS = sorted(p for p in (REPO / "taps").glob("*.py") if p.name != "__init__.py")


def tinspect_imports(path: pathlib.Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` for every import of a tinspect module in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "tinspect"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tinspect":
            found.append((node.lineno, node.module, [a.name for a in node.names]))
    return found


@pytest.mark.parametrize("path", TAPS, ids=lambda p: p.name)
def test_builtin_tap_imports_only_the_public_api(path):
    """A built-in tap imports tinspect and tinspect.taplib only, as a user's tap would."""
    wrong = [(line, module) for line, module, _ in tinspect_imports(path) if module not in PUBLIC]
    assert wrong == [], f"{path.name}: import these from tinspect or tinspect.taplib"


@pytest.mark.parametrize("path", TAPS, ids=lambda p: p.name)
def test_builtin_tap_imports_only_names_the_public_modules_export(path):
    """Every name a built-in tap takes from tinspect or tinspect.taplib is in that module's __all__."""
    unlisted = [
        (line, module, name)
        for line, module, names in tinspect_imports(path)
        if module in PUBLIC
        for name in names
        if name not in importlib.import_module(module).__all__
    ]
    assert unlisted == []


def test_the_check_catches_a_private_import(tmp_path):
    """The ast check sees ``from tinspect.chain import Tap`` and ``import tinspect.units`` in a tap."""
    tap = tmp_path / "tap.py"
    tap.write_text("from tinspect import Tap\nimport tinspect.units\n\ndef f():\n    from tinspect.chain import Tap\n")
    assert sorted(module for _, module, _ in tinspect_imports(tap)) == ["tinspect", "tinspect.chain", "tinspect.units"]


@pytest.mark.parametrize("module", PUBLIC)
def test_every_public_name_imports(module):
    """Each name in __all__ of tinspect and tinspect.taplib is there, and __all__ has no repeats."""
    mod = importlib.import_module(module)
    assert len(set(mod.__all__)) == len(mod.__all__)
    assert [name for name in mod.__all__ if not hasattr(mod, name)] == []


def test_importing_tinspect_leaves_the_taplib_out():
    """``import tinspect`` stays light: the tap toolkit is imported only by whoever uses it."""
    code = "import sys, tinspect; print(sorted(m for m in sys.modules if m.startswith('tinspect.taplib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
