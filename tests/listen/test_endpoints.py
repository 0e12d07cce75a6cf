"""tinspect's own endpoint types: the string parser, and what building a
listener from one loads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.endpoints import _parse
from twisted.internet.protocol import Factory, Protocol

import tinspect.listen.endpoints
from tests.conftest import REPO
from tinspect.listen.endpoints import BACKLOG, TProxyServerEndpoint, server_endpoint
from tinspect.listen.spec import split_endpoint


@given(st.text(alphabet=":=\\ab8", max_size=30))
def test_fields_agree_with_twisteds_own_parser(text):
    """Positional and keyword fields, escapes included, as Twisted's
    serverFromString would have split them (its parser as the oracle)."""
    try:
        expected = _parse(text)
    except RuntimeError:  # Twisted's parser fails obscurely on a lone trailing backslash
        with pytest.raises(ValueError, match="lone backslash"):
            split_endpoint(text)
    else:
        assert split_endpoint(text) == expected


def test_own_types_are_built_without_serverFromString(monkeypatch):
    def refuse(reactor, text):
        raise AssertionError(f"serverFromString({text!r})")

    monkeypatch.setattr(tinspect.listen.endpoints, "serverFromString", refuse)
    endpoint = server_endpoint(reactor, "tproxy:8080:interface=\\:\\::backlog=7:reuseport=yes")
    assert isinstance(endpoint, TProxyServerEndpoint)
    assert (endpoint.port, endpoint.interface, endpoint._backlog, endpoint._reuse_port, endpoint._transparent) == (
        8080, "::", 7, True, True)
    shared = server_endpoint(reactor, "tcpshared:3128:interface=127.0.0.1")
    assert (shared.port, shared.interface, shared._reuse_port, shared._transparent) == (3128, "127.0.0.1", True, False)
    six = server_endpoint(reactor, "tcp6:3128:interface=\\:\\:1")
    assert (type(six).__name__, six._port, six._interface) == ("TCP6ServerEndpoint", 3128, "::1")
    with pytest.raises(AssertionError, match="serverFromString"):
        server_endpoint(reactor, "tcp:3128")


@pytest.mark.parametrize("text, words", [
    ("tproxy:abc", "invalid literal"),
    ("tproxy:80:bogus=1", "bogus"),
    ("tproxy:80\\", "lone backslash"),
    ("tcpshared", "invalid literal"),
])
def test_a_malformed_string_says_what_the_form_is(text, words):
    with pytest.raises(ValueError, match=words) as info:
        server_endpoint(reactor, text)
    assert "(the form is " + text.partition(":")[0] + ":PORT[" in str(info.value)


def test_a_listener_of_our_own_type_does_not_load_every_endpoint_plugin(tmp_path):
    """A proxy started by twistd on a ``tcpshared:`` listener (parsed like ``tproxy:``, no root
    needed) has not imported autobahn, through its endpoint plugin, before any WebSocket upgrade."""
    script = (
        "import sys\n"
        "from twisted.internet import reactor\n"
        "from twisted.scripts.twistd import run\n"
        "state = sys.argv[1]\n"
        "def check():\n"
        "    with open(state + '/result', 'w') as out:\n"  # twistd sends stdout to its log
        "        print('LISTENING', 'tcpshared' in open(state + '/log').read(), file=out)\n"
        "        print('AUTOBAHN', 'autobahn' in sys.modules, file=out)\n"
        "    reactor.stop()\n"
        "reactor.callWhenRunning(reactor.callLater, 0.5, check)\n"
        "sys.argv = ['twistd', '-n', '--pidfile=', '-l', state + '/log', 'tinspect',\n"
        "            '--listen', 'tcpshared:0:interface=127.0.0.1', '--state-dir', state]\n"
        "run()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60, cwd=tmp_path, check=True,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    result = (tmp_path / "result").read_text()
    assert "LISTENING True" in result, (tmp_path / "log").read_text()
    assert "AUTOBAHN False" in result


@pytest.mark.parametrize("text", ["tcp:0:interface=127.0.0.1", "tcpshared:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1"])
@pytest_twisted.inlineCallbacks
def test_listeners_queue_a_burst_of_connections(text):
    """A listener's accept queue is the kernel's maximum (somaxconn), not Twisted's 50, so a
    burst of connections while the reactor is busy is queued instead of dropped."""
    port = yield server_endpoint(reactor, text).listen(Factory.forProtocol(Protocol))
    try:
        ss = subprocess.run(["ss", "-Hltn", f"sport = :{port.getHost().port}"], capture_output=True, text=True,
                            check=True).stdout.split()
        # ss prints State Recv-Q Send-Q ...: for a listener Send-Q is its backlog, as the kernel capped it.
        somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
        assert int(ss[2]) == min(BACKLOG, somaxconn) > 50
    finally:
        yield port.stopListening()


def test_a_string_keeps_its_own_backlog():
    """An endpoint string that names a backlog keeps it."""
    assert server_endpoint(reactor, "tcp:3128:backlog=7")._backlog == 7
