"""The built-in taps' options: mistakes are usage errors naming the option (twistd tinspect's parser)."""

from __future__ import annotations

import pytest
from twisted.python import usage

from tinspect.service import Options


def parse(*argv):
    options = Options()
    options.parseOptions(["--listen", "tcp:0:interface=127.0.0.1", *argv])
    return options


@pytest.mark.parametrize("argv, words", [
    (["--taps", "headers", "--tap-option", "headers.set=no colon here"], "expected 'Name: value'"),
    (["--taps", "headers"], "nothing to do"),
    (["--taps", "headers", "--tap-option", "headers.remove=X-A: b"], "expected a field name"),
    (["--taps", "headers", "--tap-option", "headers.set=X-A: 1", "--tap-option", "headers.direction=up"],
     "direction must be"),
    (["--taps", "faults"], "no fault enabled"),
    (["--taps", "faults", "--tap-option", "faults.rate=2", "--tap-option", "faults.drop=yes"], "between 0 and 1"),
    (["--taps", "faults", "--tap-option", "faults.drop=maybe"], "drop must be yes or no"),
    (["--taps", "faults", "--tap-option", "faults.seed=x", "--tap-option", "faults.drop=yes"], "seed must be"),
    (["--taps", "logger", "--tap-option", "logger.level=info", "--tap-option", "logger.level=debug"],
     "option level takes one value"),
    (["--taps", "filter"], "rules"),
    (["--taps", "filter", "--tap-option", "filter.rules=/nonexistent/rules.txt"], "cannot read the rules"),
])
def test_mistakes_are_usage_errors_naming_them(argv, words):
    with pytest.raises(usage.UsageError) as e:
        parse(*argv)
    assert words in str(e.value)


def test_repeated_options_are_lists_for_taps_that_take_them():
    options = parse("--taps", "headers", "--tap-option", "headers.add=X-A: 1", "--tap-option", "headers.add=X-A: 2")
    (tap,) = options["tap_objects"]
    assert tap.add == [(b"X-A", b"1"), (b"X-A", b"2")]


def test_a_bad_rules_file_is_named_with_its_line(tmp_path):
    rules = tmp_path / "rules.txt"
    rules.write_text("block host=x\nblok host=y\n")
    with pytest.raises(usage.UsageError) as e:
        parse("--taps", "filter", "--tap-option", f"filter.rules={rules}")
    assert f"{rules}:2: unknown action 'blok'" in str(e.value)


def test_quic_options_reach_the_settings():
    """--quic and --quic-ports become the settings the UDP layer reads; refuse on 443 unless told."""
    from tinspect.service import makeService

    assert (parse()["quic"], parse()["quic_ports"]) == ("refuse", (443,))
    options = parse("--quic", "pass", "--quic-ports", "443,8443")
    settings = makeService(options).ctx.settings
    assert (settings.quic, settings.quic_ports) == ("pass", (443, 8443))


@pytest.mark.parametrize("argv, words", [
    (["--quic", "allow"], "--quic must be refuse or pass"),
    (["--quic-ports", "443,http"], "--quic-ports: expected ports"),
    (["--quic-ports", "70000"], "--quic-ports: expected ports"),
])
def test_bad_quic_options_are_usage_errors(argv, words):
    """A --quic value other than refuse/pass, or a port that is not one, is refused naming the option."""
    with pytest.raises(usage.UsageError) as e:
        parse(*argv)
    assert words in str(e.value)
