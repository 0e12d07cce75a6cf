"""Packaging: a plain (non-editable) install ships the twistd plugin and the taps."""

from __future__ import annotations

import os
import subprocess
import venv

from tests.conftest import REPO


def test_plain_pip_install_registers_twistd_plugin(tmp_path):
    """After `pip install .` twistd lists tinspect and documents its options, away from the checkout."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--no-deps", str(REPO)],
        check=True, timeout=300, cwd=tmp_path,
    )
    run_twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    listing = subprocess.run([python, "-c", run_twistd, "--help"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=60)
    assert "tinspect" in listing.stdout, listing.stdout + listing.stderr
    helptext = subprocess.run([python, "-c", run_twistd, "tinspect", "--help"], capture_output=True, text=True,
                              cwd=tmp_path, timeout=60).stdout
    for option in ("--listen", "--udp", "--taps", "--tap-option", "--connect-timeout", "--udp-timeout"):
        assert option in helptext
    where = subprocess.run(
        [python, "-c", "import tinspect, taps.logger, twisted.plugins.tinspect_plugin as p; print(p.__file__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=True,
    ).stdout
    assert str(env_dir) in where and str(REPO) not in where
    unit = subprocess.run(
        [python, "-m", "tinspect", "install-unit", "--unit-dir", str(tmp_path / "unit"), "--config-dir",
         str(tmp_path / "etc")], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert unit.returncode == 0, unit.stderr  # the unit and the nftables file ship as package data
    console = subprocess.run(
        [python, "-c", "from importlib import resources; d = resources.files('tinspect.console') / 'static'; "
                       "print(sorted(p.name for p in d.iterdir()), d)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=True).stdout
    assert "['console.css', 'console.js', 'index.html']" in console and str(env_dir) in console  # the console's page
    assert f"ExecStart={env_dir}/bin/" in (tmp_path / "unit" / "tinspect.service").read_text()  # this Python's
    plugins_dir = next((env_dir / "lib").glob("python3*/site-packages/twisted/plugins"))
    assert (plugins_dir / "tinspect_plugin.py").exists()
    # Twisted's plugin convention: our tree merges into twisted.plugins, so it has no __init__.py.
    assert not (REPO / "twisted" / "__init__.py").exists()
    assert not (REPO / "twisted" / "plugins" / "__init__.py").exists()


def test_the_checkout_as_installed_runs_twistd_tinspect_from_anywhere(tmp_path):
    """As scripts/install-deps installs the checkout (editable), `twistd tinspect` works outside it with no
    PYTHONPATH: the README's first commands must not depend on the directory they run in."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    helptext = subprocess.run(["twistd", "tinspect", "--help"], capture_output=True, text=True, cwd=tmp_path,
                              env=env, timeout=60)
    assert helptext.returncode == 0 and "--listen" in helptext.stdout, helptext.stdout + helptext.stderr
