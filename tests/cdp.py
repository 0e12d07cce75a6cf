"""A tiny Chrome DevTools Protocol client for the browser tests: headless Chromium over a pipe.

Chromium's ``--remote-debugging-pipe`` speaks the protocol on file descriptors
3 (commands in) and 4 (replies and events out), each message JSON ended by a
NUL byte. A pipe needs no port, so the browser can run inside a lab namespace
(`Browser` takes the ``ip netns exec`` prefix) while this process, outside it,
drives it. Synchronous and blocking: the tests that use it run the proxy in
another process. Also `png_pixels`, a PNG decoder small enough for counting
colours in a screenshot (there is no imaging library in the test environment).
"""

from __future__ import annotations

import base64
import json
import os
import select
import struct
import subprocess
import tempfile
import time
import zlib
from typing import Any, Callable, Sequence

__all__ = ["Browser", "CDPError", "png_pixels"]


class CDPError(Exception):
    """The browser answered a command with an error, died, or did not answer in time."""


class Browser:
    """Headless Chromium, one page, driven over the DevTools pipe.

    Args:
        prefix: the command to run Chromium under (``["ip", "netns", "exec", NS]``).
        width, height: the window size, for screenshots.
    """

    def __init__(self, prefix: Sequence[str] = (), width: int = 1280, height: int = 800) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="tinspect-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def fds() -> None:  # the child's fds 3 and 4 are the pipe ends Chromium expects
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        argv = [*prefix, "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
                f"--window-size={width},{height}", "--hide-scrollbars", "about:blank"]
        self.proc = subprocess.Popen(argv, preexec_fn=fds, pass_fds=(3, 4), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def call(self, method: str, timeout: float = 30, session: bool = False, **params: Any) -> dict:
        """Send one command (to the page with ``session``) and wait for its reply.

        Raises:
            CDPError: the reply is an error, or none came within ``timeout`` seconds.
        """
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise CDPError("the browser did not answer in time")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise CDPError(f"the browser exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def goto(self, url: str) -> None:
        """Load ``url`` in the page (returns once navigation started; poll for content)."""
        result = self.call("Page.navigate", session=True, url=url)
        if result.get("errorText"):
            raise CDPError(f"cannot load {url}: {result['errorText']}")

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30, what: str = "") -> Any:
        """Poll ``expression`` until it is truthy; its value.

        Raises:
            AssertionError: it stayed falsy for ``timeout`` seconds (generous: a
                loaded machine is slow, and no assertion here is about speed).
        """
        deadline = time.monotonic() + timeout
        problem = ""
        while True:
            try:
                value = self.js(expression)
            except CDPError as e:  # the page is still loading, or the element not there yet
                value, problem = None, f" (last: {e})"
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"the page never showed {what or expression}{problem}")
            time.sleep(0.1)

    def screenshot(self) -> bytes:
        """The page as PNG."""
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])

    def close(self) -> None:
        """End the browser and remove its profile."""
        try:
            self.call("Browser.close", timeout=5)
        except (CDPError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self.proc.stderr.close()
        self._profile.cleanup()

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def png_pixels(data: bytes) -> tuple[int, int, Callable[[int, int], tuple[int, ...]]]:
    """Decode an 8-bit RGB or RGBA PNG (what Chromium writes): ``(width, height, pixel(x, y))``."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
    width, height, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG (depth {depth}, colour type {colour}, interlace {interlace})")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return width, height, lambda x, y: tuple(rows[y][x * bpp:x * bpp + 3])
