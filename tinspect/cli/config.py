"""``--config tinspect.toml``: the command line's options, in a file.

Every key is a ``twistd tinspect`` long option without its dashes, with the
value the option takes (a string, a number, ``true`` for a flag, a list for
an option that may be repeated); each ``[tap.NAME]`` table holds the
options of one tap (what ``--tap-option NAME.KEY=VALUE`` gives; a list for
several values)::

    listen = ["tproxy:8080:interface=\\\\:\\\\:"]
    taps = ["logger", "filter"]          # or "logger,filter"
    state-dir = "/var/lib/tinspect"
    max-connections-per-client = 256
    metrics = "tcp:9108:interface=127.0.0.1"
    insecure-upstream = false
    upstream-proxy = ["direct for 10.0.0.0/8", "http://user:pass@proxy.corp.example:3128"]

    [tap.filter]
    rules = "/etc/tinspect/rules.txt"

The file becomes command-line arguments placed before the real ones, so the
command line overrides it: a later single-valued option wins, and an option
that may be repeated (``listen``, ``udp``, ``passthrough``, ``proxy-auth``,
``allow-clients``, ``upstream-proxy``, ``client-cert``) given on the command line replaces the file's list; a
``--tap-option TAP.KEY=...`` replaces the file's value of that key, and a
``--taps`` that leaves a tap out leaves its table out. A mistake is
reported with the file and the key. No I/O but reading the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "config_argv", "split_config"]

_TAP_TABLE = "tap"


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the key."""


def split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """Take ``--config FILE`` (or ``--config=FILE``) out of ``argv``: ``(FILE or None, the rest)``."""
    rest, path = [], None
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            path = next(it, None)
            if path is None:
                raise ConfigError("--config needs a file")
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return path, rest


def config_argv(path: str, parameters: list, flags: list, repeatable: set[str], cli: list[str]) -> list[str]:
    """The arguments ``path`` stands for.

    Args:
        path: the TOML file.
        parameters: the options' ``optParameters`` (name, short, default, doc[, coerce]).
        flags: their ``optFlags``.
        repeatable: options that may be given several times.
        cli: the real command line, whose repeatable options replace the file's.

    Raises:
        ConfigError: the file cannot be read or parsed, a key is unknown, or a
            value has the wrong type; the message names the file and key.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    kinds: dict[str, Any] = {}
    for p in parameters:
        kinds[p[0]] = p[4] if len(p) > 4 and p[4] in (int, float) else str
    for f in flags:
        kinds[f[0]] = bool
    on_cli = {a[2:].split("=", 1)[0] for a in cli if a.startswith("--")}
    cli_taps = _cli_taps(cli)
    cli_tap_options = {_cli_value(cli, i).split("=", 1)[0] for i, a in enumerate(cli)
                       if a == "--tap-option" or a.startswith("--tap-option=")}
    out: list[str] = []
    for key, value in data.items():
        where = f"{path}: key {key!r}"
        if key == _TAP_TABLE:
            out += _tap_options(value, where, cli_taps, cli_tap_options)
            continue
        if key in ("config", "worker"):
            raise ConfigError(f"{where} cannot be set in a config file")
        if key == "taps":
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                value = ",".join(value)
            if not isinstance(value, str):
                raise ConfigError(f"{where} must be a string or a list of strings")
            out += ["--taps", value]
        elif key in repeatable:
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str) for v in values):
                raise ConfigError(f"{where} must be a string or a list of strings")
            if key not in on_cli:
                for v in values:
                    out += [f"--{key}", v]
        elif key in kinds:
            kind = kinds[key]
            if kind is bool:
                if not isinstance(value, bool):
                    raise ConfigError(f"{where} must be true or false")
                if value:
                    out.append(f"--{key}")
            elif kind is str:
                if not isinstance(value, str):
                    raise ConfigError(f"{where} must be a string")
                out += [f"--{key}", value]
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                        (kind is int and not isinstance(value, int)):
                    raise ConfigError(f"{where} must be {'an integer' if kind is int else 'a number'}")
                out += [f"--{key}", str(value)]
        else:
            known = sorted([*kinds, *repeatable, "taps", _TAP_TABLE])
            raise ConfigError(f"{where} is not an option (known: {', '.join(k for k in known if k != 'worker')})")
    return out


def _cli_taps(cli: list[str]) -> set[str] | None:
    """The keys of the taps ``--taps``/``-t`` names on the command line, or ``None`` without it."""
    from tinspect.taplib.loader import TapLoadError, parse_tap_names

    found = None
    for i, arg in enumerate(cli):
        if arg in ("--taps", "-t") or arg.startswith("--taps="):
            found = _cli_value(cli, i)
    if found is None:
        return None
    try:
        return {ref.key for ref in parse_tap_names(found)}
    except TapLoadError:
        return set()  # the command line's own mistake is reported when it is parsed


def _cli_value(cli: list[str], i: int) -> str:
    """The value of the option at ``cli[i]`` (``--opt VALUE`` or ``--opt=VALUE``)."""
    arg = cli[i]
    if "=" in arg and arg.startswith("--"):
        return arg.split("=", 1)[1]
    return cli[i + 1] if i + 1 < len(cli) else ""


def _tap_options(value: Any, where: str, chosen: set[str] | None, overridden: set[str]) -> list[str]:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ConfigError(f"{where} must hold one table per tap: [tap.NAME]")
    out = []
    for tap, options in value.items():
        if chosen is not None and tap not in chosen:
            continue  # the command line chose other taps: this table is for a tap not in the chain
        for key, v in options.items():
            if f"{tap}.{key}" in overridden:
                continue  # the command line gives this one
            values = v if isinstance(v, list) else [v]
            for item in values:
                if isinstance(item, bool):
                    item = "yes" if item else "no"
                elif isinstance(item, (int, float)):
                    item = str(item)
                elif not isinstance(item, str):
                    raise ConfigError(f"{where}: [tap.{tap}] {key} must be a string, number, boolean or a list "
                                      f"of them")
                out += ["--tap-option", f"{tap}.{key}={item}"]
    return out
