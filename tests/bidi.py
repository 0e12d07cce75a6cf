"""A tiny WebDriver BiDi client for the browser tests: headless Firefox, the second browser.

Firefox (Debian ``firefox-esr``) speaks WebDriver BiDi on a WebSocket,
``ws://127.0.0.1:PORT/session``, when started with ``--remote-debugging-port``.
It runs inside a lab namespace, where the console listens on loopback, so the
WebSocket is opened from inside that namespace too: a thread enters it
(``setns``, which moves only the calling thread) and makes the TCP socket, which
then works from any thread of this process. Synchronous and blocking, with the
same ``goto`` / ``js`` / ``wait_for`` / ``screenshot`` as `tests.cdp.Browser`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

from websockets.sync.client import connect

from tests.cdp import CDPError

__all__ = ["Firefox"]

_CLONE_NEWNET = 0x40000000


def _socket_in(netns: str, port: int, timeout: float) -> socket.socket:
    """A TCP socket connected to 127.0.0.1:``port`` of the namespace ``netns``."""
    box: list = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{netns}") as ns:
                if libc.setns(ns.fileno(), _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns")
            box.append(socket.create_connection(("127.0.0.1", port), timeout=timeout))
        except Exception as e:
            box.append(e)

    thread = threading.Thread(target=make)  # a thread of its own: it never leaves the namespace
    thread.start()
    thread.join()
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


class Firefox:
    """Headless Firefox in the namespace ``netns``, one page, driven over WebDriver BiDi."""

    def __init__(self, netns: str, width: int = 1280, height: int = 800, port: int = 9223) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="tinspect-firefox-")
        home = self._profile.name
        with open(os.path.join(home, "user.js"), "w") as prefs:
            prefs.write('user_pref("browser.shell.checkDefaultBrowser", false);\n'
                        'user_pref("datareporting.policy.dataSubmissionEnabled", false);\n'
                        'user_pref("toolkit.telemetry.reportingpolicy.firstRun", false);\n')
        argv = ["ip", "netns", "exec", netns, "firefox-esr", "--headless", "--no-remote", "--profile", home,
                f"--remote-debugging-port={port}", "about:blank"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env={**os.environ, "HOME": home},
                                     start_new_session=True)
        self._next_id = 0
        self._closing = contextlib.ExitStack()
        try:
            self._ws = self._closing.enter_context(connect(
                f"ws://127.0.0.1:{port}/session", sock=self._wait_for_port(netns, port), open_timeout=30,
                max_size=2**26))
            self.call("session.new", capabilities={})
            self.context = self.call("browsingContext.getTree")["contexts"][0]["context"]
            self.call("browsingContext.setViewport", context=self.context,
                      viewport={"width": width, "height": height})
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self, netns: str, port: int) -> socket.socket:
        deadline = time.monotonic() + 60  # Firefox's first start in a fresh profile takes a while
        while True:
            if self.proc.poll() is not None:
                raise CDPError(f"firefox exited {self.proc.returncode}: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                return _socket_in(netns, port, 30)
            except OSError:
                if time.monotonic() > deadline:
                    raise CDPError("firefox did not open its WebDriver BiDi port") from None
                time.sleep(0.2)

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict:
        """Send one command; its result (events that come meanwhile are skipped)."""
        self._next_id += 1
        wanted = self._next_id
        self._ws.send(json.dumps({"id": wanted, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") != wanted:
                continue
            if message.get("type") == "error":
                raise CDPError(f"{method}: {message.get('error')}: {message.get('message')}")
            return message["result"]

    def goto(self, url: str) -> None:
        """Open ``url`` and wait until it has loaded."""
        self.call("browsingContext.navigate", context=self.context, url=url, wait="complete")

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (anything JSON can carry)."""
        result = self.call("script.evaluate", expression=f"JSON.stringify({expression})",
                           target={"context": self.context}, awaitPromise=False)
        if result.get("type") == "exception":
            raise CDPError(f"{expression}: {result['exceptionDetails'].get('text')}")
        value = result["result"]
        return None if value.get("type") != "string" else json.loads(value["value"])

    def wait_for(self, expression: str, what: str, timeout: float = 15) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise CDPError(f"timed out waiting for {what}: {expression}")
            time.sleep(0.05)

    def screenshot(self) -> bytes:
        """The page as PNG bytes."""
        return base64.b64decode(self.call("browsingContext.captureScreenshot", context=self.context)["data"])

    def close(self) -> None:
        self._closing.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait()
        self.proc.stderr.close()
        self._profile.cleanup()

    def __enter__(self) -> "Firefox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
