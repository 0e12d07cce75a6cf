"""``--console`` and its options: loopback by default, passwords from the command line or a file,
nothing of the console without it, and no open console on a public address."""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.python import usage

from tests.conftest import REPO
from tinspect.console.feed import ConsoleFeed
from tinspect.context import Settings
from tinspect.proxy import ListenError, Proxy
from tinspect.service import Options, console_endpoint, makeService


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize("given, bound", [
    ("8081", "tcp:8081:interface=127.0.0.1"),
    ("tcp:8081", "tcp:8081:interface=127.0.0.1"),
    ("tcp6:8081", "tcp6:8081:interface=\\:\\:1"),
    ("tcp:8081:interface=192.0.2.1", "tcp:8081:interface=192.0.2.1"),
    ("unix:/run/tinspect/console.sock", "unix:/run/tinspect/console.sock"),
])
def test_the_console_binds_loopback_unless_told(given, bound):
    """A bare port or a tcp: endpoint without interface= is on loopback; an explicit one stays."""
    assert console_endpoint(given) == bound


def test_without_console_nothing_of_it_is_loaded_or_in_the_chain():
    """A proxy built without --console imports no console module and has no console tap."""
    code = ("import sys; from tinspect.service import Options, makeService; o = Options(); "
            "o.parseOptions(['--taps', 'logger']); p = makeService(o); "
            "print([str(t) for t in p.ctx.chain.taps]); "
            "print(sorted(m for m in sys.modules if m.startswith('tinspect.console') or m == 'twisted.web.server'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         timeout=120).stdout.splitlines()
    assert out == ["['logger']", "[]"]


def test_with_console_the_feed_wraps_the_taps(tmp_path):
    """--console puts the feed's head first and its tail last, around the configured taps."""
    proxy = makeService(parse("--taps", "logger", "--console", "8081", "--console-flows", "50"))
    taps = proxy.ctx.chain.taps
    assert [str(t) for t in taps] == ["console", "logger", "console-tail"]
    assert isinstance(taps[0].feed, ConsoleFeed) and proxy.console.ring.capacity == 50


def test_console_options_come_from_the_config_file(tmp_path):
    """The file's console keys are the options (a list of passwords, a size); the command line overrides."""
    path = tmp_path / "tinspect.toml"
    path.write_text('console = "tcp:8081"\nconsole-auth = ["ops:one", "dev:two"]\nconsole-flows = 300\n'
                    'console-clients = "192.0.2.0/24"\n')
    options = parse("--config", str(path), "--console-flows", "400")
    assert options["console"] == "tcp:8081:interface=127.0.0.1"
    assert options["console_auth"] == ["ops:one", "dev:two"] and options["console-flows"] == 400
    assert options["console_clients"] == ["192.0.2.0/24"]


def test_passwords_come_from_a_file_comments_and_blanks_skipped(tmp_path):
    """--console-auth-file holds USER:PASSWORD lines (kept out of ps); # lines and blank ones are skipped."""
    secrets = tmp_path / "console.passwd"
    secrets.write_text("# operators\nops:s3cret\n\ndev:other\n")
    assert parse("--console", "8081", "--console-auth-file", str(secrets))["console_auth"] == ["ops:s3cret", "dev:other"]


@pytest.mark.parametrize("argv, words", [
    (["--console-flows", "0"], "--console-flows must be positive"),
    (["--console-body", "-1"], "--console-body not negative"),
    (["--console-auth", "nocolon"], "--console-auth: credentials must be USER:PASSWORD"),
    (["--console-clients", "192.0.2.0/33"], "--console-clients: not a network"),
    (["--console-auth-file", "/nonexistent/console.passwd"], "--console-auth-file /nonexistent/console.passwd"),
])
def test_bad_console_options_are_usage_errors(argv, words):
    """Each mistake is refused before anything binds, naming the option."""
    with pytest.raises(usage.UsageError) as e:
        parse("--console", "8081", *argv)
    assert words in str(e.value)


def test_a_public_address_without_a_password_is_refused_with_one(tmp_path):
    """Binding every address (not loopback) without --console-auth fails with a clear error; with a
    password the same endpoint starts, and so does loopback without one."""
    plain = Settings(intercept_tls=False)  # no CA to make
    refused = Proxy(settings=plain).serve_console("tcp:0:interface=0.0.0.0")
    refused.listen("tcp:0:interface=127.0.0.1")
    with pytest.raises(ListenError, match="not a loopback address.*--console-auth"):
        refused.privilegedStartService()
    for service in refused:
        service.stopService()
    for proxy in (Proxy(settings=plain).serve_console("tcp:0:interface=0.0.0.0", credentials=["ops:s3cret"]),
                  Proxy(settings=plain).serve_console("tcp:0:interface=127.0.0.1")):
        proxy.listen("tcp:0:interface=127.0.0.1")
        proxy.privilegedStartService()
        for service in proxy:
            service.stopService()


def test_with_workers_each_extra_worker_is_told_where_to_serve_its_records():
    """--workers 2 --console: worker 0's console covers worker 1's socket, in a 0700 directory, and worker 1's
    command line names that socket and its number."""
    import os
    import shutil
    import stat

    proxy = makeService(parse("--workers", "2", "--console", "8081", "--metrics", "9108"))
    argv = proxy.getServiceNamed("workers").argvs[0]
    path = argv[argv.index("--worker-console") + 1]
    try:
        listener = next(s for s in proxy if s.name == "console tcp:8081:interface=127.0.0.1")
        assert listener.site_args[3] == {1: path}
        assert argv[argv.index("--worker-index") + 1] == "1" and "--worker-metrics" in argv
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    finally:
        shutil.rmtree(os.path.dirname(path))


def test_an_extra_worker_feeds_its_console_to_a_unix_socket_and_prefixes_its_flow_ids(tmp_path):
    """As worker 3 with --console, the process wraps its chain in the feed, serves the records on its
    socket instead of a console port, and names its flows w3-PID-N."""
    code = ("import os; from tinspect.service import Options, makeService; from tinspect.flow import Flow; "
            "o = Options(); o.parseOptions(['--taps', 'logger', '--console', '8081', '--worker', '--worker-index',"
            f" '3', '--worker-console', {str(tmp_path / 'c.sock')!r}]); p = makeService(o); "
            "print([str(t) for t in p.ctx.chain.taps]); print([s.name for s in p]); "
            "print(Flow(('127.0.0.1', 1), None).id == f'w3-{os.getpid()}-1')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                         timeout=120).stdout.splitlines()
    assert out[0] == "['console', 'logger', 'console-tail']"
    assert f"worker console {tmp_path / 'c.sock'}" in out[1] and "console tcp:" not in out[1]
    assert out[2] == "True"
