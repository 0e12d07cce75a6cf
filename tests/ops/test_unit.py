"""``tinspect install-unit``: what it writes, and what it leaves alone."""

from __future__ import annotations

from tinspect.cli.command import main
from tinspect.ops.unit import STARTER_CONFIG


def test_install_unit_fills_in_the_paths_and_keeps_an_existing_config(tmp_path, capsys):
    """The unit names the config and rules it was installed with; a config already there is kept."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "tinspect.toml").write_text('taps = ["filter"]\n')
    assert main(["install-unit", "--unit-dir", str(tmp_path / "unit"), "--config-dir", str(etc)]) == 0
    text = (tmp_path / "unit" / "tinspect.service").read_text()
    assert "@" not in text.replace("$MAINPID", "")  # no placeholder left
    assert f"tinspect --config {etc / 'tinspect.toml'}" in text
    assert f"ExecStartPre=+/usr/sbin/nft -f {etc / 'tinspect.nft'}" in text
    assert (etc / "tinspect.toml").read_text() == 'taps = ["filter"]\n'
    assert "kept" in capsys.readouterr().out
    assert 'define LAN = "eth1"' in (etc / "tinspect.nft").read_text()


def test_the_starter_config_is_one_the_proxy_accepts(tmp_path):
    """The config install-unit writes parses into the options of twistd tinspect."""
    from tinspect.service import Options

    path = tmp_path / "tinspect.toml"
    path.write_text(STARTER_CONFIG)
    options = Options()
    options.parseOptions(["--config", str(path), "--state-dir", str(tmp_path / "state")])
    assert [spec.text for spec in options["listen"]] == ["tproxy:8080:interface=\\:\\:"]
    assert options["metrics"] == "tcp:9108:interface=127.0.0.1"
