"""Sans-IO modules (parsers, units, specs, policies) import nothing from Twisted; taps only the tap contract."""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.conftest import REPO

SANS_IO = [
    "tinspect/units.py",
    "tinspect/headers.py",
    "tinspect/flow.py",
    "tinspect/console/feed.py",
    "tinspect/console/hub.py",
    "tinspect/console/merge.py",
    "tinspect/console/ring.py",
    "tinspect/layers/sniff.py",
    "tinspect/layers/http/assemble.py",
    "tinspect/layers/http/explicit.py",
    "tinspect/layers/http/grammar.py",
    "tinspect/layers/http/http1/parse.py",
    "tinspect/layers/http/http1/write.py",
    "tinspect/layers/http/h2/fields.py",
    "tinspect/layers/quic/initial.py",
    "tinspect/layers/quic/policy.py",
    "tinspect/layers/tls/clienthello.py",
    "tinspect/layers/tls/policy.py",
    "tinspect/listen/spec.py",
    "tinspect/net/addresses.py",
    "tinspect/net/parent.py",
    "tinspect/net/sockets.py",
    "tinspect/net/timeouts.py",
    "tinspect/ops/metrics.py",
    "tinspect/ops/exposition.py",
    "tinspect/taplib/cachekeys.py",
    "tinspect/taplib/conditions.py",
    "tinspect/taplib/domains.py",
    "tinspect/taplib/filtering.py",
    "tinspect/taplib/har.py",
    "tinspect/taplib/redirects.py",
]
"""Every module that parses bytes, holds data or decides policy without I/O."""

NOT_PARSERS = {
    "tinspect/__main__.py": "the console entry point",
    "tinspect/_moved.py": "import machinery for the old module paths",
    "tinspect/cli/command.py": "the console command: runs things",
    "tinspect/cli/config.py": "reads a file for the command line",
    "tinspect/lab/command.py": "runs a lab",
    "tinspect/lab/netlab.py": "runs namespaces and processes",
    "tinspect/layers/tls/ca.py": "reads and writes the CA's files",
    "tinspect/taplib/cachedir.py": "reads and removes a cache directory's files",
    "tinspect/taplib/jsonlog.py": "appends to a file of its own",
    "tinspect/taplib/loader.py": "imports taps by name",
    "tinspect/ops/unit.py": "writes the systemd unit and its files",
}
"""Modules without a Twisted import that are not sans-IO cores (packages' ``__init__`` aside)."""

THIRD_PARTY_IO = ("twisted", "autobahn", "txaio")


def imports(path: pathlib.Path) -> list[str]:
    """Every module name ``path`` imports, at any depth."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append(node.module or "")
    return names


@pytest.mark.parametrize("path", SANS_IO)
def test_sans_io_module_imports_nothing_from_twisted(path):
    """The module parses bytes or holds data only: no twisted import anywhere in it."""
    imported = imports(REPO / path)
    assert imported, "expected at least some stdlib imports"
    assert not [name for name in imported if name.split(".")[0] in THIRD_PARTY_IO]


def test_every_module_without_twisted_is_listed():
    """A new module that imports no Twisted is a sans-IO core (listed, so it stays one) or says why not."""
    unlisted = []
    for path in sorted((REPO / "tinspect").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" or rel in SANS_IO or rel in NOT_PARSERS:
            continue
        if not [name for name in imports(path) if name.split(".")[0] in THIRD_PARTY_IO]:
            unlisted.append(rel)
    assert unlisted == [], "add these to SANS_IO (or NOT_PARSERS, with the reason)"


TAP_TWISTED = {
    "twisted.internet.defer": "Deferreds: a tap's handle may return one",
    "twisted.internet.task": "deferLater, for a tap that delays units",
    "twisted.internet.threads": "deferToThread, for a tap that reads files on reload",
    "twisted.logger": "the log a tap writes to",
}
"""What a tap may take from Twisted: the tap contract's Deferreds, timers and log (and the reactor,
for its timers). Servers, protocols and sockets (twisted.web, twisted.internet.protocol...) live
under tinspect/ and reach taps through tinspect.taplib."""


def tap_twisted_imports(path: pathlib.Path) -> list[str]:
    """The Twisted, autobahn and txaio imports of ``path`` outside `TAP_TWISTED` (``module`` or ``module:name``)."""
    wrong = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found = [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found = [(node.module or "", alias.name) for alias in node.names]
        else:
            continue
        for module, name in found:
            if module.split(".")[0] not in THIRD_PARTY_IO or module in TAP_TWISTED:
                continue
            if (module, name) != ("twisted.internet", "reactor"):
                wrong.append(module if name is None else f"{module}:{name}")
    return wrong


@pytest.mark.parametrize("path", sorted((REPO / "taps").glob("*.py")), ids=lambda p: p.name)
def test_a_tap_takes_from_twisted_only_the_tap_contract(path):
    """A built-in tap imports tinspect and tinspect.taplib for everything beyond Deferreds, timers and the log."""
    assert tap_twisted_imports(path) == [], "move this into tinspect/ and export it from tinspect.taplib"


def test_the_tap_check_catches_a_server_of_its_own(tmp_path):
    """twisted.web and a protocol are caught, at any depth; Deferred, the logger and the reactor are not."""
    tap = tmp_path / "tap.py"
    tap.write_text("from twisted.internet.defer import Deferred\nfrom twisted.logger import Logger\n"
                   "import twisted.web.static\n\ndef f():\n    from twisted.internet import protocol, reactor\n"
                   "    from twisted.web.server import Site\n")
    assert sorted(tap_twisted_imports(tap)) == ["twisted.internet:protocol", "twisted.web.server:Site",
                                             "twisted.web.static"]
