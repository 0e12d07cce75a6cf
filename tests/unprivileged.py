"""Running a command as an unprivileged user (nobody) holding only the capabilities it is given.

The systemd unit's test (tests/e2e/test_e2e_service.py) and the start-up checks
of options that need a privilege (tests/cli/test_privileges.py) use it.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

NOBODY = 65534


def python_view() -> list[str]:
    """Mount commands that let an unprivileged user reach this Python, when it
    lives under a home directory only root may enter (pyenv in /root):
    ``/root`` seen as a directory holding just the interpreter's tree. They run
    in the proxy's own mount namespace, so nothing changes outside it."""
    prefix = Path(sys.prefix).resolve()
    for parent in reversed(prefix.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            view = Path(tempfile.mkdtemp(prefix="tinspect-view-"))
            os.chmod(view, 0o755)
            inner = prefix.relative_to(parent).parts[0]
            (view / inner).mkdir()
            return [f"mount --bind {parent / inner} {view / inner}", f"mount --rbind {view} {parent}"]
    return []


def setpriv(caps: list[str]) -> list[str]:
    """``setpriv`` as nobody with exactly ``caps`` (``["net_admin"]``), inherited, ambient and bounding."""
    names = ",".join(["-all", *("+" + c for c in caps)])
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", f"--inh-caps={names}",
            f"--ambient-caps={names}", f"--bounding-set={names}", "--no-new-privs"]


def run_as_nobody(argv: list[str], caps: list[str], env: dict[str, str], timeout: float = 60,
                  cwd: str = "/") -> subprocess.CompletedProcess:
    """Run ``argv`` as nobody with ``caps`` and ``env``, in a mount namespace of its own (`python_view`)."""
    script = " && ".join([*python_view(), "exec " + shlex.join(
        [*setpriv(caps), "env", *[f"{k}={v}" for k, v in env.items()], *argv])])
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
