"""WebSocket peers for the end-to-end tests: the ``websockets`` library on both ends.

``python -m tests.wspeers server PORT LOG [--tls CHAIN KEY] [--no-deflate]``
serves, by path:

* ``/echo``: echoes every message; picks subprotocol ``chat`` when offered.
  The text message ``extensions?`` is answered with the extensions this
  server negotiated instead; ``ping?`` with ``pinged`` once a ping of the
  server's own was answered.
* ``/close``: echoes, and closes with 4002 "server bye" after the first one.
* ``/drop``: drops the TCP connection (no close frame) after the first message.
* ``/refuse``: answers 403 with the body ``go away``.
* ``/flood``: the first message is a count N; sends N binary 64 KiB messages,
  message i made of the byte ``i % 256``, as fast as the connection takes them.

Every message the server receives, and how each connection ended, is
appended to LOG as one JSON line, so a test can see what crossed the proxy.

``python -m tests.wspeers client SCENARIO URL [--ca PEM] [--proxy URL] [ARGS]``
runs one scenario and prints its result as JSON (see `SCENARIOS`).
"""

from __future__ import annotations

import asyncio
import http
import json
import ssl
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus


def _log(logfile: str, **record) -> None:
    with open(logfile, "a") as f:
        f.write(json.dumps(record) + "\n")


async def _server(port: int, log: str, tls: tuple[str, str] | None, deflate: bool) -> None:
    async def handler(ws):
        path = ws.request.path
        try:
            async for message in ws:
                kind = "binary" if isinstance(message, bytes) else "text"
                size = len(message)
                head = message[:40] if isinstance(message, str) else message[:40].hex()
                _log(log, event="message", path=path, kind=kind, size=size, head=head)
                if message == "ping?":
                    await asyncio.wait_for(await ws.ping(b"from the server"), 5)
                    await ws.send("pinged")
                    continue
                if message == "extensions?":
                    await ws.send(json.dumps([e.name for e in ws.protocol.extensions]))
                    continue
                if path == "/flood":
                    for i in range(int(message)):
                        await ws.send(bytes([i % 256]) * 65536)
                    continue
                if path == "/drop":
                    ws.transport.abort()
                    return
                await ws.send(message)
                if path == "/close":
                    await ws.close(4002, "server bye")
        except ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        _log(log, event="closed", path=path, code=rcvd.code if rcvd else None, reason=rcvd.reason if rcvd else None)

    def process_request(connection, request):
        if request.path == "/refuse":
            return connection.respond(http.HTTPStatus.FORBIDDEN, "go away\n")
        return None

    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
    async with serve(handler, None, port, ssl=context, subprotocols=["chat"], process_request=process_request,
                     compression="deflate" if deflate else None, max_size=None):
        await asyncio.Future()


# -- client scenarios ------------------------------------------------------------


async def basic(ws, args):
    """Text, binary, a 1 MiB message and a fragmented one, echoed."""
    out = {"subprotocol": ws.subprotocol, "extensions": [e.name for e in ws.protocol.extensions]}
    await ws.send("hello")
    out["text"] = await ws.recv()
    await asyncio.wait_for(await ws.ping(b"from the client"), 5)
    await ws.send("ping?")
    out["pings"] = await ws.recv()  # our ping was answered, and so was the server's
    await ws.send(bytes(range(256)))
    echoed = await ws.recv()
    out["binary"] = echoed == bytes(range(256)) and isinstance(echoed, bytes)
    big = ("0123456789abcdef" * 65536)
    await ws.send(big)
    out["big"] = (await ws.recv()) == big
    await ws.send(["frag-", "men", "ted"])
    out["fragmented"] = await ws.recv()
    await ws.send("extensions?")
    out["server_extensions"] = json.loads(await ws.recv())
    await ws.close(4000, "client bye")
    out["close"] = [ws.close_code, ws.close_reason]
    return out


async def many(ws, args):
    """N messages sent as fast as possible, then read back: all there, in order."""
    n = int(args[0])

    async def sender():
        for i in range(n):
            await ws.send(f"m{i}")

    task = asyncio.ensure_future(sender())
    got = 0
    for i in range(n):
        message = await ws.recv()
        if message != f"m{i}":
            return {"received": got, "out_of_order": [i, message]}
        got += 1
    await task
    await ws.close()
    return {"received": got}


async def say(ws, args):
    """Send each argument, print what comes back for each; then close normally."""
    replies = []
    for text in args:
        await ws.send(text)
        replies.append(await ws.recv())
    await ws.close()
    return {"replies": replies, "close": [ws.close_code, ws.close_reason]}


async def wait_close(ws, args):
    """Send one message; report what comes back and how the proxy closed us."""
    await ws.send(args[0] if args else "hi")
    replies = []
    try:
        while True:
            replies.append(await asyncio.wait_for(ws.recv(), 10))
    except ConnectionClosed:
        pass
    rcvd = ws.protocol.close_rcvd
    return {"replies": replies, "close": [rcvd.code, rcvd.reason] if rcvd else None}


async def big(ws, args):
    """One message of N bytes; report how the proxy closed us."""
    await ws.send(b"x" * int(args[0]))
    return await wait_close_only(ws)


async def wait_close_only(ws):
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosed:
        pass
    rcvd = ws.protocol.close_rcvd
    return {"close": [rcvd.code, rcvd.reason] if rcvd else None}


async def reset(ws, args):
    """Send one message, read its echo, then reset the TCP connection (no close frame)."""
    await ws.send("before reset")
    echoed = await ws.recv()
    ws.transport.abort()
    return {"echo": echoed}


async def slow_read(ws, args):
    """Ask /flood for N messages and read them at RATE bytes/s; count the good ones."""
    n, rate = int(args[0]), int(args[1])
    await ws.send(str(n))
    loop = asyncio.get_running_loop()
    start = loop.time()
    good = 0
    for i in range(n):
        message = await ws.recv()
        if message == bytes([i % 256]) * 65536:
            good += 1
        ahead = (i + 1) * 65536 / rate - (loop.time() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await ws.close()
    return {"good": good}


SCENARIOS = {"slow-read": slow_read, "basic": basic, "many": many, "say": say, "wait-close": wait_close, "big": big, "reset": reset}


async def _client(scenario: str, url: str, ca: str | None, proxy: str | None, args: list[str]) -> None:
    context = None
    if url.startswith("wss:"):
        context = ssl.create_default_context(cafile=ca)
    try:
        async with connect(url, ssl=context, proxy=proxy, subprotocols=["chat", "other"], open_timeout=10,
                           close_timeout=5, max_size=None, compression="deflate") as ws:
            result = await SCENARIOS[scenario](ws, args)
    except InvalidStatus as e:
        result = {"status": e.response.status_code, "body": e.response.body.decode("utf-8", "replace")}
    print(json.dumps(result), flush=True)


def main(argv: list[str]) -> None:
    cmd, *rest = argv
    if cmd == "server":
        port, log, *opts = rest
        tls = (opts[opts.index("--tls") + 1], opts[opts.index("--tls") + 2]) if "--tls" in opts else None
        asyncio.run(_server(int(port), log, tls, "--no-deflate" not in opts))
    elif cmd == "client":
        scenario, url, *opts = rest
        ca = proxy = None
        if "--ca" in opts:
            i = opts.index("--ca")
            ca = opts[i + 1]
            del opts[i : i + 2]
        if "--proxy" in opts:
            i = opts.index("--proxy")
            proxy = opts[i + 1]
            del opts[i : i + 2]
        asyncio.run(_client(scenario, url, ca, proxy, opts))
    else:
        raise SystemExit(f"unknown command {cmd!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
