"""No import cycles between the modules of tinspect/ and taps/.

The graph is read with `ast`, not by importing: every ``import`` and ``from ... import``
anywhere in a module counts (at module level, inside functions, under ``if TYPE_CHECKING:``),
since a cycle hidden in a function or a type annotation is still two modules that cannot be
understood, tested or moved one without the other.

What counts as an edge:

* ``import a.b.c`` and ``from a.b.c import name``: an edge to ``a.b.c`` (a module or a
  package's ``__init__``); ``from a.b import c`` where ``a/b/c.py`` is a module: an edge to
  ``a.b.c``, not to ``a.b``. Relative imports are resolved first.
* An explicit import of a package (``import tinspect``, ``from tinspect import Flow``,
  ``from tinspect.listen import SpecError``) is an edge to its ``__init__``: its re-exports
  are real imports, and a module that ``tinspect/__init__.py`` imports importing
  ``from tinspect import ...`` back is a real cycle (it fails, or sees half a package, when
  it is imported first).
* The parent packages that Python imports implicitly before a submodule (``tinspect`` and
  ``tinspect.layers`` before ``tinspect.layers.raw``) are not edges. They run first and
  finish before the submodule is needed, whatever the submodule imports; counting them
  would make every module that ``tinspect/__init__.py`` re-exports (units, chain, flow,
  proxy...) cycle through it, and hide the cycles that matter among them.

Only imports of modules of these two packages are edges; third-party imports are ignored.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.conftest import REPO

PACKAGES = ("tinspect", "taps")


def module_name(path: pathlib.Path) -> str:
    """``tinspect/layers/raw.py`` -> ``tinspect.layers.raw``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    """Every module of the packages, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imported(name: str, path: pathlib.Path, known: dict[str, pathlib.Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` (at ``path``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in known else source)
    return {target for target in targets if target in known and target != name}


def graph() -> dict[str, set[str]]:
    """Module -> the modules it imports."""
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or ``None`` when the graph has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_no_module_imports_itself_round_a_cycle():
    """Every import (module-level, in a function, or for types only) points one way: no cycle."""
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_function_level_type_only_and_package_imports():
    """The reader finds the imports a cycle can hide in: inside functions, under TYPE_CHECKING,
    and a submodule imported from its package; relative imports resolve."""
    edges = graph()
    assert "tinspect.layers.http.h2.layer" in edges["tinspect.layers.dispatch"]  # module level
    assert "tinspect.layers.websocket" in edges["tinspect.layers.http.http1.layer"]  # in a function
    assert "tinspect.layers.http.explicit" in edges["tinspect.context"]  # under TYPE_CHECKING
    assert "tinspect.proxy" in edges["tinspect"]  # a package's re-exports
    assert "tinspect._moved" in edges["tinspect"]  # from tinspect import _moved: the submodule
    assert "tinspect" in edges["tinspect.lab.command"]  # import tinspect: the package itself
    assert "tinspect" not in edges["tinspect.layers.raw"]  # no implicit parent edge


@pytest.mark.parametrize(
    "edges, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"b2"}, "b2": {"b"}}, ["b", "b2", "b"]),
    ],
)
def test_find_cycle_reports_the_path_round_the_cycle(edges, cycle):
    """The cycle finder returns the modules round a cycle, start repeated at the end."""
    assert find_cycle(edges) == cycle
