"""``tinspect install-unit``: the systemd unit, the gateway's nftables rules and a starter config.

The unit (``tinspect/ops/tinspect.service``, shipped in the package) runs
``twistd --nodaemon tinspect --config /etc/tinspect/tinspect.toml`` as the
unprivileged user ``tinspect`` holding only CAP_NET_ADMIN (IP_TRANSPARENT)
and CAP_NET_BIND_SERVICE (ports below 1024), with systemd's hardening on;
``ExecStartPre`` lines load the nftables table (``tinspect.nft``) and the
policy routing as root. `install` fills in the twistd of the Python that
runs it and writes the three files; it never overwrites a config the
administrator already has.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

__all__ = ["STARTER_CONFIG", "unit_text", "nft_text", "find_twistd", "install"]

STARTER_CONFIG = """\
# tinspect's settings: every key is a `twistd tinspect` option (docs/configuration.md).
listen = ["tproxy:8080:interface=\\\\:\\\\:"]
udp = ["tproxy:8053:interface=\\\\:\\\\:"]
taps = ["logger"]
metrics = "tcp:9108:interface=127.0.0.1"
"""
"""What ``/etc/tinspect/tinspect.toml`` holds when ``install-unit`` writes it:
the listeners the shipped nftables rules divert to."""


def unit_text(twistd: str, config: str, nft_rules: str) -> str:
    """The unit file, for the twistd at ``twistd``, the config file ``config``
    and the rules file ``nft_rules``."""
    template = resources.files("tinspect.ops").joinpath("tinspect.service").read_text()
    return template.replace("@TWISTD@", twistd).replace("@CONFIG@", config).replace("@NFT_RULES@", nft_rules)


def nft_text() -> str:
    """The gateway's nftables rules (edit ``LAN`` for the interface clients are on)."""
    return resources.files("tinspect.ops").joinpath("tinspect.nft").read_text()


def find_twistd() -> str:
    """twistd for this Python (the one that finds this tinspect): its script,
    or this Python running twistd when there is no script beside it."""
    beside = Path(sys.executable).with_name("twistd")
    if beside.exists():
        return str(beside)
    return f'{sys.executable} -c "from twisted.scripts.twistd import run; run()"'


def install(unit_dir: Path, config_dir: Path, twistd: str) -> list[str]:
    """Write the unit into ``unit_dir``, and the rules and (if there is none) the
    config into ``config_dir``; returns what was written, one line each."""
    config_dir.mkdir(parents=True, exist_ok=True)
    unit_dir.mkdir(parents=True, exist_ok=True)
    rules = config_dir / "tinspect.nft"
    config = config_dir / "tinspect.toml"
    done = []
    (unit_dir / "tinspect.service").write_text(unit_text(twistd, str(config), str(rules)))
    done.append(f"wrote {unit_dir / 'tinspect.service'}")
    rules.write_text(nft_text())
    done.append(f"wrote {rules} (set LAN to the clients' interface)")
    if config.exists():
        done.append(f"kept {config}")
    else:
        config.write_text(STARTER_CONFIG)
        done.append(f"wrote {config}")
    return done
