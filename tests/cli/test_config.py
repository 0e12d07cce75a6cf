"""--config tinspect.toml: options from a file, the command line on top, mistakes named by key."""

from __future__ import annotations

import pytest
from twisted.python import usage

from tinspect.service import Options


def parse(tmp_path, text, *argv):
    path = tmp_path / "tinspect.toml"
    path.write_text(text)
    options = Options()
    options.parseOptions(["--config", str(path), *argv])
    return options


FULL = """
listen = ["tcp:18080:interface=127.0.0.1", "transparent@tcp:18081:interface=127.0.0.1"]
taps = ["logger", "headers"]
max-body = 4096
response-timeout = 2.5
allow-clients = "10.0.0.0/8"
insecure-upstream = true
metrics = "tcp:9108:interface=127.0.0.1"

[tap.logger]
headers = true

[tap.headers]
add = ["X-A: 1", "X-A: 2"]
direction = "both"
"""


def test_every_kind_of_key_becomes_its_option(tmp_path):
    o = parse(tmp_path, FULL)
    assert [s.text for s in o["listen"]] == ["tcp:18080:interface=127.0.0.1", "transparent@tcp:18081:interface=127.0.0.1"]
    assert o["max-body"] == 4096 and o["response-timeout"] == 2.5 and o["insecure-upstream"]
    assert o["allow_clients"] == ["10.0.0.0/8"] and o["metrics"] == "tcp:9108:interface=127.0.0.1"
    logger, headers = o["tap_objects"]
    assert logger._headers is True
    assert headers.add == [(b"X-A", b"1"), (b"X-A", b"2")] and len(headers.directions) == 2


def test_the_command_line_overrides_the_file(tmp_path):
    o = parse(tmp_path, FULL, "--max-body", "10", "--listen", "tcp:1:interface=127.0.0.1", "--taps", "logger",
              "--tap-option", "logger.headers=no")
    assert o["max-body"] == 10
    assert [s.text for s in o["listen"]] == ["tcp:1:interface=127.0.0.1"]  # the file's list is replaced
    (logger,) = o["tap_objects"]
    assert logger._headers is False


@pytest.mark.parametrize("text, words", [
    ("listn = ['tcp:1']", "key 'listn' is not an option"),
    ("max-body = '10'", "key 'max-body' must be an integer"),
    ("max-body = 1.5", "key 'max-body' must be an integer"),
    ("response-timeout = true", "key 'response-timeout' must be a number"),
    ("insecure-upstream = 'yes'", "key 'insecure-upstream' must be true or false"),
    ("listen = [1]", "key 'listen' must be a string or a list of strings"),
    ("tap = 'x'", "key 'tap' must hold one table per tap"),
    ("[tap.logger]\nlevel = {a = 1}", "[tap.logger] level must be"),
    ("worker = true", "key 'worker' cannot be set"),
    ("max-body = ", "not valid TOML"),
])
def test_mistakes_name_the_file_and_key(tmp_path, text, words):
    with pytest.raises(usage.UsageError) as e:
        parse(tmp_path, text)
    assert str(tmp_path / "tinspect.toml") in str(e.value) and words in str(e.value), str(e.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(usage.UsageError, match="cannot read the config"):
        Options().parseOptions(["--config", str(tmp_path / "nope.toml")])


def test_a_tap_option_mistake_from_the_file_names_the_tap(tmp_path):
    with pytest.raises(usage.UsageError, match="tap 'headers'.*expected 'Name: value'"):
        parse(tmp_path, "taps = 'headers'\n[tap.headers]\nset = 'no colon'\n")


def test_quic_policy_from_the_file(tmp_path):
    """quic and quic-ports in the TOML file set the QUIC policy; the command line overrides them."""
    o = parse(tmp_path, 'quic = "pass"\nquic-ports = "443"\n')
    assert (o["quic"], o["quic_ports"]) == ("pass", (443,))
    o = parse(tmp_path, 'quic = "pass"\nquic-ports = "443,8443"\n', "--quic", "refuse")
    assert (o["quic"], o["quic_ports"]) == ("refuse", (443, 8443))


def test_upstream_proxy_rules_come_from_the_file_and_the_command_line_replaces_them(tmp_path):
    """upstream-proxy is a list in the file; the command line's rules replace it."""
    text = 'upstream-proxy = ["direct for 10.0.0.0/8", "socks5h://u:p@198.51.100.3:1080"]\n'
    assert parse(tmp_path, text)["upstream_proxy"] == ["direct for 10.0.0.0/8", "socks5h://u:p@198.51.100.3:1080"]
    assert parse(tmp_path, text, "--upstream-proxy", "http://198.51.100.2:3128")["upstream_proxy"] == [
        "http://198.51.100.2:3128"]


def test_a_bad_upstream_proxy_is_refused_without_its_password(tmp_path):
    """A rule that cannot be parsed stops the start with a message that masks the password."""
    with pytest.raises(usage.UsageError) as e:
        parse(tmp_path, 'upstream-proxy = "gopher://u:hunter2@198.51.100.3"\n')
    assert "scheme" in str(e.value) and "hunter2" not in str(e.value)


def test_client_certs_and_source_addresses_come_from_the_file(tmp_path):
    """client-cert (a list), passthrough-client-auth and spoof-source in TOML reach the service's settings."""
    from tinspect.service import makeService

    options = parse(tmp_path, 'client-cert = ["*.corp.example=a.pem,a.key", "10.0.0.0/8=b.pem"]\n'
                              "passthrough-client-auth = true\nspoof-source = true\n", "--listen", "tcp:0")
    settings = makeService(options).ctx.settings
    assert settings.client_certs == ("*.corp.example=a.pem,a.key", "10.0.0.0/8=b.pem")
    assert settings.passthrough_client_auth and settings.spoof_source


def test_a_malformed_client_cert_is_refused_at_start(tmp_path):
    """--client-cert without PATTERN=CERT is a usage error quoting it."""
    with pytest.raises(usage.UsageError, match=r"--client-cert: 'a.pem': expected PATTERN=CERT.pem"):
        parse(tmp_path, "", "--client-cert", "a.pem")
