"""What users rely on stays where it was: the 0.1 module paths, the plugin, the tap names."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import tinspect
from tests.conftest import REPO
from tinspect._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_imports_the_module_that_moved(old):
    """``import tinspect.http1`` gives the very module now at its new path, with its own spec."""
    module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])
    assert module.__spec__.name == MOVED[old]


def test_patching_through_an_old_path_patches_the_module_that_moved(monkeypatch):
    """One module under two names: a test or lab script patching the old path reaches the code."""
    import tinspect.layers.http.http1.parse as parse

    old = importlib.import_module("tinspect.http1")
    monkeypatch.setattr(old, "marker_for_this_test", 1, raising=False)
    assert parse.marker_for_this_test == 1


def test_packages_that_replaced_modules_still_have_their_names():
    """tinspect.cli, tinspect.lab and tinspect.listen were modules: their names still import."""
    from tinspect.cli import COMMANDS, build_parser, main  # noqa: F401
    from tinspect.lab import REQUIRED_TOOLS, run_lab  # noqa: F401
    from tinspect.listen import DEFAULT_LISTEN, parse_listen, parse_udp, split_endpoint  # noqa: F401

    with pytest.raises(AttributeError):
        tinspect.cli.not_a_name  # noqa: B018


def test_the_public_names_and_the_plugin_are_where_users_find_them():
    """tinspect's exports, the twistd plugin's names and the built-in tap names are those of 0.1."""
    assert set(tinspect.__all__) >= {
        "Tap", "TapChain", "Flow", "FlowClosed", "Proxy", "ListenError", "Settings", "Unit", "Data", "Datagram",
        "Request", "Response", "BodyChunk", "MessageEnd", "WebSocketMessage", "WebSocketClose", "Headers",
        "Direction", "TO_SERVER", "TO_CLIENT",
    }
    out = subprocess.run(
        [sys.executable, "-c",
         "import twisted.plugins.tinspect_plugin as p, taps;"
         "print(p.tinspectServiceMaker.tapname, p.tproxyServerParser.prefix, p.sharedServerParser.prefix);"
         "print(' '.join(sorted(taps.BUILTIN)))"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=True,
    ).stdout.split("\n")
    assert out[0] == "tinspect tproxy tcpshared"
    assert out[1].split() == sorted(["cache", "faults", "filter", "headers", "logger", "mangler", "recorder"])
