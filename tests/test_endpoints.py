"""tinspect's own endpoint types: the string parser, and what building a
listener from one loads."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.endpoints import _parse

from tests.conftest import REPO
from tinspect.endpoints import TProxyServerEndpoint, _fields, server_endpoint


@given(st.text(alphabet=":=\\ab8", max_size=30))
def test_fields_agree_with_twisteds_own_parser(text):
    """Positional and keyword fields, escapes included, as Twisted's
    serverFromString would have split them (its parser as the oracle)."""
    try:
        expected = _parse(text)
    except RuntimeError:  # Twisted's parser fails on a lone trailing backslash; ours takes it as nothing
        expected = _parse(text[:-1])
    assert _fields(text) == expected


def test_own_types_are_built_directly():
    endpoint = server_endpoint(reactor, "tproxy:8080:interface=\\:\\::backlog=7:reuseport=yes")
    assert isinstance(endpoint, TProxyServerEndpoint)
    assert (endpoint.port, endpoint.interface, endpoint._backlog, endpoint._reuse_port, endpoint._transparent) == (
        8080, "::", 7, True, True)
    shared = server_endpoint(reactor, "tcpshared:3128:interface=127.0.0.1")
    assert (shared.port, shared.interface, shared._reuse_port, shared._transparent) == (3128, "127.0.0.1", True, False)
    assert type(server_endpoint(reactor, "tcp:3128")).__name__ == "TCP4ServerEndpoint"


def test_a_tproxy_listener_does_not_load_every_endpoint_plugin(tmp_path):
    """A TPROXY proxy started by twistd has not imported autobahn (through
    its endpoint plugin) before any WebSocket upgrade."""
    script = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from twisted.scripts.twistd import run\n"
        "state = sys.argv[1]\n"
        "def check():\n"
        "    with open(state + '/result', 'w') as out:\n"  # twistd sends stdout to its log
        "        print('LISTENING', 'tproxy' in open(state + '/log').read(), file=out)\n"
        "        print('AUTOBAHN', 'autobahn' in sys.modules, file=out)\n"
        "    reactor.stop()\n"
        "reactor.callLater(2, check)\n"
        "sys.argv = ['twistd', '-n', '--pidfile=', '-l', state + '/log', 'tinspect',\n"
        "            '--listen', 'tproxy:0:interface=127.0.0.1', '--state-dir', state]\n"
        "run()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60, cwd=tmp_path, check=True,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    result = (tmp_path / "result").read_text()
    assert "LISTENING True" in result, (tmp_path / "log").read_text()
    assert "AUTOBAHN False" in result
