"""Sans-IO modules (parsers, units, specs) import nothing from Twisted."""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.conftest import REPO

SANS_IO = ["tinspect/layers/http/http1/parse.py", "tinspect/layers/http/http1/write.py", "tinspect/headers.py", "tinspect/layers/sniff.py",
           "tinspect/layers/http/explicit.py", "tinspect/layers/tls/policy.py", "tinspect/layers/tls/clienthello.py", "tinspect/units.py", "tinspect/listen/spec.py",
           "tinspect/net/sockets.py"]


@pytest.mark.parametrize("path", SANS_IO)
def test_sans_io_module_imports_nothing_from_twisted(path):
    """The module parses bytes or holds data only: no twisted import anywhere in it."""
    tree = ast.parse(pathlib.Path(REPO / path).read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module or "")
    assert imported, "expected at least some stdlib imports"
    assert not [name for name in imported if name.split(".")[0] == "twisted"]
