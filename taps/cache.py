"""The ``cache`` tap: large downloads kept on disk and served from there (build farms).

The idea of the dduct project, as a tap. GET requests whose URL matches one
of ``patterns`` and none of ``exclude`` (by default OCI/Docker blobs and the
package and archive formats build farms pull, never index files; see
`tinspect.taplib.cachekeys`) are answered from the cache directory when the
file is there, without contacting the server; otherwise the response
streams to the client as it comes while the tap writes it to a temporary
file, and only a complete transfer (its ``Content-Length`` reached, its
sha256 equal to the digest a content-addressed URL names) is renamed into
place. A cut transfer leaves nothing behind. A URL naming a digest is kept
under that digest, so the same blob from another host or with another
signed query is a hit.

* Workers (``--workers``) share the directory: entries appear by rename,
  so a reader sees a whole file or none, and a worker finding an entry it
  did not store indexes it. One worker at a time fetches a key into the
  cache, holding ``locks/<key>`` (`fcntl.flock`, the file removed as the
  lock is let go). A request for that key in another worker meanwhile waits
  for that fetch, looking every `POLL` seconds (on HTTP/1.1 in the tap, on
  HTTP/2 at the tap's own server) for up to `WAIT_LIMIT` seconds, and is then
  served from disk; if the fetch ends without an entry, the waiting worker
  fetches it itself (HTTP/1.1) or answers 502 (HTTP/2). So one upstream fetch
  serves every worker.

* Hits are served by a small HTTP server of the tap's own on loopback
  (`tinspect.taplib.CacheServer`: streamed from disk with back-pressure, and
  ``Range`` requests answered with 206 as a server would); the request is
  routed there (`Request.destination`), so it passes every other tap as
  usual and the response streams back through the proxy. This module is the
  policy; the server's Twisted side lives in `tinspect.taplib.cacheserver`.
* Requests for a URL that is being fetched wait for that fetch and are then
  served from disk: the server sees one request (coalescing). On HTTP/1.1
  the request waits in the tap, and goes to the server itself if the fetch
  fails. On HTTP/2 (where a waiting tap would hold every stream of the
  connection) it is routed to the cache's own server at once, which answers
  when the fetch is stored (502 if that fetch is then cut off); a request
  that comes before the fetch's response head has shown it is one the
  cache keeps goes to the server in parallel.
* A ``Range`` request for a URL not cached yet passes through, uncached.
* A redirect (``301/302/303/307/308``) answering a request it would keep is
  followed by the proxy itself when `follow_redirect` allows it: the tap
  answers the whole redirect with the ``GET`` of its target, which passes
  every tap as a request of its own, and the client gets the target's answer,
  kept under the original URL's key (a registry's blob under its digest,
  fetched from the CDN it redirects to). Credentials go along only to the
  same origin.
* An entry fetched with credentials (``Authorization`` or ``Cookie``) is
  private (``"credentials": true`` in its ``.json``): a hit on it sends a
  ``HEAD`` of the URL with the new request's own headers to the origin in its
  place, and only a ``200`` or a redirect serves it from disk; otherwise the
  request goes to the origin (one round trip per private hit).
* Responses other than a plain 200, or marked ``no-store``/``private``, are
  not kept.
* The directory is capped at ``max_size`` bytes: the least recently used
  entries go first.

Options:
    dir: the cache directory (required; created if missing).
    patterns: regular expressions searched in the URL without its query
        (repeat the option or give a list for several); replaces the
        default set.
    exclude: regular expressions (the same way) for URLs never kept;
        replaces the default set of index files.
    max_size: bytes the cache may hold (default 10 GiB; ``K``, ``M``, ``G``
        suffixes allowed).
    max_redirects: redirects followed for one request (default 5; ``0``
        passes them to the client).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from tinspect import BodyChunk, Flow, MessageEnd, Request, Response, Tap, Unit
from tinspect.taplib import (
    CACHE_EXCLUDE,
    CACHE_KEY,
    CACHE_PATTERNS,
    KEY_HEADER,
    MAX_REDIRECTS,
    REDIRECT_STATUSES,
    CacheServer,
    cache_key,
    cacheable,
    follow_redirect,
    poll,
)

__all__ = ["CacheTap", "CACHE_EXCLUDE", "CACHE_PATTERNS", "KEY_HEADER"]

WAIT_LIMIT = 120  # seconds a request waits for another's fetch before going to the server itself
POLL = 0.1  # seconds between looks at a fetch another worker is making (its lock, its entry)
PRIVATE_MARK = b"credentials"  # what a lock file holds while its fetch is of a private entry
_SIZES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _compile(option: str, value: str | list[str]) -> list[re.Pattern[str]]:
    items = [value] if isinstance(value, str) else list(value)
    try:
        return [re.compile(p) for p in items]
    except re.error as e:
        raise ValueError(f"{option}: not a regular expression: {e}") from None


def _size(text: str | int) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", str(text), re.I)
    if not m:
        raise ValueError(f"max_size: not a size: {text!r} (say 10G, 512M)")
    return int(m.group(1)) * _SIZES[m.group(2).upper()]


def _credentials(req: Request) -> bool:
    """Whether ``req`` says who its client is (what it gets may be that client's alone)."""
    return "authorization" in req.headers or "cookie" in req.headers


class _Fill:
    """One response being written to the cache while it streams to its client."""

    __slots__ = ("key", "url", "request", "flow_id", "lock", "tracked", "tmp", "file", "hash", "written", "expected",
                 "digest", "meta", "waiters", "hops", "credentials")

    def __init__(self, key: str, url: str, digest: str | None, request: Request, flow_id: Any, lock: int) -> None:
        self.key, self.url, self.digest, self.flow_id, self.lock = key, url, digest, flow_id, lock
        self.request = request  # held, so its id() stays its own while the fill is tracked
        self.tracked: dict = {}  # its flow's state["cache"], where it is tracked by id(request)
        self.tmp: Path | None = None
        self.file: Any = None
        self.hash = hashlib.sha256()
        self.written = 0
        self.expected: int | None = None
        self.meta: dict = {}
        self.waiters: list[Deferred] = []
        self.hops = 0  # redirects followed so far; `request` is then the last one sent
        self.credentials = _credentials(request)  # its entry is private: hits are confirmed with the origin


class CacheTap(Tap):
    """Caches matching GET downloads on disk; see the module docstring."""

    kinds = (Request, Response, BodyChunk, MessageEnd)
    list_options = frozenset({"patterns", "exclude"})
    log = Logger(namespace="tinspect.tap.cache")

    def __init__(self, dir: str, patterns: str | list[str] = CACHE_PATTERNS,
                 exclude: str | list[str] = CACHE_EXCLUDE, max_size: str | int = "10G",
                 max_redirects: str | int = MAX_REDIRECTS) -> None:
        self.patterns = _compile("patterns", patterns)
        try:
            self.max_redirects = int(max_redirects)
        except ValueError:
            raise ValueError(f"max_redirects: not a number: {max_redirects!r}") from None
        if not 0 <= self.max_redirects <= 20:
            raise ValueError(f"max_redirects: {self.max_redirects} is not between 0 and 20")
        self.exclude = _compile("exclude", exclude)
        self.max_size = _size(max_size)
        self.root = Path(dir)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.hits = self.misses = self.served_bytes = self.mismatches = 0  # for `metrics`
        try:
            for path in (self.objects, self.tmp, self.locks):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"dir: cannot use {dir}: {e.strerror}") from None
        for leftover in self.tmp.iterdir():  # a transfer cut by a crash (not another worker's, in progress)
            parts = leftover.name.split(".")
            if len(parts) < 2 or not parts[1].isdigit() or not Path(f"/proc/{parts[1]}").exists():
                leftover.unlink(missing_ok=True)
        for stale in self.locks.iterdir():  # left by a worker that crashed: nobody holds them
            held = self._lock(stale.name) if CACHE_KEY.fullmatch(stale.name) else None
            if held is not None:
                self._unlock(stale.name, held)
        self.index: dict[str, list] = {}  # key -> [size, last used]
        for meta in self.objects.glob("*.json"):
            body = meta.with_suffix("")
            if body.exists():
                self.index[meta.stem] = [body.stat().st_size, meta.stat().st_mtime]
            else:
                meta.unlink(missing_ok=True)
        self.total = sum(size for size, _ in self.index.values())
        self._fills: dict[str, _Fill] = {}  # key -> the fetch writing it
        self.server = CacheServer(self)  # where hits are routed; it listens once the first one is

    # -- requests ----------------------------------------------------------------------

    def handle(self, unit: Unit, flow: Flow) -> Any:
        kind = type(unit)
        if kind is Request:
            return self._request(unit, flow)
        if kind is Response:
            return self._response(unit, flow)
        message = unit.message
        if type(message) is Response and message.request is not None:
            # Its head passed `_response`: a fill still tracked for its request is being written.
            tracked = flow.state.get("cache")
            fill = tracked.get(id(message.request)) if tracked else None
            if fill is not None and fill.request is message.request:
                if kind is BodyChunk:
                    self._write(fill, unit.data)
                else:
                    self._finish(fill)
        return unit

    def wants_whole_body(self, message: Unit, flow: Flow) -> bool:
        """A redirect answering a fetch this tap keeps, and the answer to a check that a
        request may read a private entry, come whole: the tap answers them with a request,
        which a layer takes only in place of a whole response."""
        if type(message) is not Response:
            return False
        checks = flow.state.get("cache.checks")
        if checks and id(message.request) in checks:
            return True
        if message.status not in REDIRECT_STATUSES or not self.max_redirects:
            return False
        return self._tracked(message.request, flow) is not None

    def _tracked(self, req: Request | None, flow: Flow) -> _Fill | None:
        """The fill ``req`` (of ``flow``) is being fetched for, if any."""
        tracked = flow.state.get("cache")
        fill = tracked.get(id(req)) if tracked and req is not None else None
        return fill if fill is not None and fill.request is req else None

    def _request(self, req: Request, flow: Flow) -> Any:
        if self._tracked(req, flow) is not None:
            return req  # a redirect this tap follows: it belongs to the client's request's fill
        passing = flow.state.get("cache.pass")
        if passing and passing.pop(id(req), None) is req:
            return req  # decided already, after checking it may read a private entry
        if KEY_HEADER in req.headers:
            del req.headers[KEY_HEADER]  # only the tap names entries to its server
        if req.method not in ("GET", "HEAD") or not cacheable(req.url, self.patterns, self.exclude):
            return req
        key, digest = cache_key(req.url)
        if key in self.index or self._adopt(key):
            return self._hit(req, key, flow)
        ranged = "range" in req.headers
        fill = self._fills.get(key)
        if fill is not None and not ranged and req.stream_id is None:
            # HTTP/1.1 only: on HTTP/2 a waiting tap would hold every stream of the connection.
            from twisted.internet import reactor

            waiting: Deferred = Deferred()
            fill.waiters.append(waiting)
            self.log.info("flow {flow_id}: cache: waiting for the fetch of {url} in progress", flow_id=flow.id,
                          url=req.url)
            waiting.addCallback(lambda stored: self._hit(req, key, flow) if stored else req)
            waiting.addTimeout(WAIT_LIMIT, reactor, onTimeoutCancel=lambda result, timeout: req)
            return waiting
        if fill is not None and not ranged and fill.file is not None and not fill.credentials:
            # HTTP/2: the request goes on at once, to the cache's own server, which answers it
            # when the fetch is stored; the fetch's response is known to be one it keeps. (A
            # private one goes to the origin: its check cannot come before the entry exists.)
            self.log.info("flow {flow_id}: cache: {url} is being fetched; the cache answers when it is stored",
                          flow_id=flow.id, url=req.url)
            return self._route(req, key)
        if req.method == "GET" and not ranged and fill is None:
            lock = self._lock(key)
            if lock is not None and self._adopt(key):  # stored by another worker since we looked
                self._unlock(key, lock)
                return self._hit(req, key, flow)
            if lock is not None:
                self._fill(req, key, digest, flow, lock)
            elif req.stream_id is None:
                self.log.info("flow {flow_id}: cache: another worker is fetching {url}; waiting for it",
                              flow_id=flow.id, url=req.url)
                waiting = self._other_worker(key)
                waiting.addCallback(self._other_worker_done, req, key, digest, flow)
                return waiting
            elif not self._private_fetch(key):
                # HTTP/2: the cache's own server waits for that fetch, not this connection's streams.
                self.log.info("flow {flow_id}: cache: another worker is fetching {url}; the cache answers when it "
                              "is stored", flow_id=flow.id, url=req.url)
                return self._route(req, key)
            else:
                self.log.info("flow {flow_id}: cache: another worker is fetching {url}, a private entry; streamed "
                              "through, not kept", flow_id=flow.id, url=req.url)
        self.misses += 1
        return req

    def _fill(self, req: Request, key: str, digest: str | None, flow: Flow, lock: int) -> None:
        """Start keeping the answer to ``req``, this process holding ``key``'s ``lock``."""
        self._fills[key] = fill = _Fill(key, req.url, digest, req, flow.id, lock)
        fill.tracked = flow.state.setdefault("cache", {})
        fill.tracked[id(req)] = fill
        if fill.credentials:  # so that other workers know before it is stored (`_private_fetch`)
            try:
                os.write(lock, PRIVATE_MARK)
            except OSError:
                pass  # they then find out from the entry, and fail closed (`wait_stored`)
        self.log.info("flow {flow_id}: cache: miss {url}", flow_id=flow.id, url=req.url)

    def _other_worker(self, key: str) -> Deferred:
        """Wait for the fetch of ``key`` another worker sharing the directory is making.

        Looks every `POLL` seconds whether the entry is stored, or the lock is
        free (that worker let go without storing it, or died), for up to
        `WAIT_LIMIT` seconds. A worker cannot hear from another; a look costs
        two system calls.

        Returns:
            A Deferred firing with ``True`` once the entry is stored, with the
            lock (a descriptor, now this process's) when it was let go without
            the entry, or with ``None`` when the wait ran out.
        """
        return poll(lambda: self._look(key), POLL, WAIT_LIMIT)

    def _look(self, key: str) -> bool | int | None:
        """One look of `_other_worker`: ``True`` (stored), the lock (let go), or ``None`` (still fetching)."""
        if key in self.index or self._adopt(key):
            return True
        lock = self._lock(key)
        if lock is not None and self._adopt(key):
            self._unlock(key, lock)
            return True
        return lock

    def _other_worker_done(self, result: bool | int | None, req: Request, key: str, digest: str | None,
                           flow: Flow) -> Request:
        """The wait of `_other_worker` for ``req`` (HTTP/1.1) ended: a hit, this worker's fetch, or the server."""
        if result is True:
            return self._hit(req, key, flow)
        self.misses += 1
        if result is None:
            self.log.info("flow {flow_id}: cache: the other worker's fetch of {url} took over {limit} s; streamed "
                          "through, not kept", flow_id=flow.id, url=req.url, limit=WAIT_LIMIT)
        elif flow.closed:
            self._unlock(key, result)
        else:
            self._fill(req, key, digest, flow, result)
        return req

    def _private_fetch(self, key: str) -> bool:
        """Whether the fetch of ``key`` another worker holds the lock for is of a private entry."""
        try:
            return (self.locks / key).read_bytes() == PRIVATE_MARK
        except OSError:
            return False

    def _lock(self, key: str) -> int | None:
        """This process's hold on fetching ``key`` into the shared directory, or ``None`` if another has it.

        A non-blocking `fcntl.flock` on ``locks/<key>``: the kernel drops it
        when the descriptor closes, so a crashed worker holds nothing. The
        holder removes the file before letting go (`_unlock`), so lock files
        do not pile up; a process that opened the file before it was removed
        and locks it afterwards holds a file nobody else can find, which is
        why the lock counts only when the name still leads to the descriptor's
        file, else it is taken again on the file the name leads to now.
        """
        path = self.locks / key
        for _ in range(8):  # each retry means another worker took and let go the lock meanwhile
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                self.log.warn("cache: cannot lock {key}: {error}", key=key, error=e.strerror)
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            try:
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except OSError:
                pass  # removed by the holder before us, after we opened it
            os.close(fd)
        return None

    def _unlock(self, key: str, fd: int) -> None:
        """Let go of `_lock`'s hold, removing the file first (while still holding it)."""
        try:
            os.unlink(self.locks / key)
        except OSError:
            pass
        os.close(fd)

    def _adopt(self, key: str) -> bool:
        """Index an entry another worker sharing the directory has stored."""
        body = self.objects / key
        try:
            size = body.stat().st_size
            (self.objects / f"{key}.json").stat()
        except OSError:
            return False
        self.index[key] = [size, time.time()]
        self.total += size
        self._evict()
        return key in self.index

    def _hit(self, req: Request, key: str, flow: Flow, confirmed: bool = False) -> Request:
        if key not in self.index:  # evicted while waiting
            return req
        if not (self.objects / key).exists():  # evicted by another worker sharing the directory
            size, _ = self.index.pop(key)
            self.total -= size
            return req
        if not confirmed and self._private(key):
            return self._check(req, key, flow)
        self.index[key][1] = time.time()
        try:
            os.utime(self.objects / f"{key}.json")
        except OSError:
            pass
        self.hits += 1
        self.log.info("flow {flow_id}: cache: hit {url}", flow_id=flow.id, url=req.url)
        flow.verdict = "cached"
        return self._route(req, key)

    def _private(self, key: str) -> bool:
        """Whether ``key``'s entry was fetched with credentials (its ``.json`` says so)."""
        try:
            return bool(json.loads((self.objects / f"{key}.json").read_text()).get("credentials"))
        except (OSError, ValueError):
            return True  # unreadable: treated as the stricter kind

    def _check(self, req: Request, key: str, flow: Flow) -> Request:
        """Ask the origin, with ``req``'s own credentials, whether ``req`` may read ``key``'s
        private entry: a ``HEAD`` goes in its place, and its answer decides (`_checked`)."""
        head = Request("HEAD", req.target, req.headers.copy(), version=req.version, scheme=req.scheme,
                       authority=req.authority, body=b"", stream_id=req.stream_id, destination=req.destination)
        flow.state.setdefault("cache.checks", {})[id(head)] = (head, req, key)
        self.log.info("flow {flow_id}: cache: {url} was fetched with credentials; asking the origin whether this "
                      "request may read it", flow_id=flow.id, url=req.url)
        return head

    def _checked(self, resp: Response, req: Request, key: str, flow: Flow) -> Request:
        """The origin answered the ``HEAD`` of `_check`: ``200`` or a redirect serves ``req`` from
        disk; anything else (``401``, ``403``, ``404``...) sends it to the origin."""
        if resp.status == 200 or resp.status in REDIRECT_STATUSES:
            answer = self._hit(req, key, flow, confirmed=True)
        else:
            self.log.info("flow {flow_id}: cache: the origin answered {status} for {url}; not served from the cache",
                          flow_id=flow.id, status=resp.status, url=req.url)
            self.misses += 1
            answer = req
        flow.state.setdefault("cache.pass", {})[id(answer)] = answer
        return answer

    def _route(self, req: Request, key: str) -> Request:
        req.destination = self.server.address()
        req.scheme = "http"
        req.headers[KEY_HEADER] = key
        return req

    # -- what the cache's own server asks (tinspect.taplib.cacheserver.Entries) -------------

    def wait_stored(self, key: str) -> Deferred | None:
        """For a request routed to the cache's server, ``key`` not on disk: the fetch to wait for,
        this process's or another worker's (`_other_worker`), or ``None`` when there is none.

        Returns:
            A Deferred firing with whether the entry was stored and may be
            served from disk: not a private one, which needs its check with
            the origin (`_check`) that only the tap can make.
        """
        fill = self._fills.get(key)
        if fill is not None:
            waiting: Deferred = Deferred()
            fill.waiters.append(waiting)
            return waiting.addCallback(lambda stored: stored and not self._private(key))
        lock = self._lock(key)
        if lock is None:  # another worker is fetching it (the tap routed the request here for that)
            return self._other_worker(key).addCallback(self._other_worker_stored, key)
        self._unlock(key, lock)
        return None

    def _other_worker_stored(self, result: bool | int | None, key: str) -> bool:
        """The fetch of another worker the server waited for has ended (or the wait ran out)."""
        if isinstance(result, int) and result is not True:
            self._unlock(key, result)
        return result is True and not self._private(key)

    def served(self, sent: int) -> None:
        """Count body bytes the cache's server sent (`metrics`)."""
        self.served_bytes += sent

    # -- responses being written ---------------------------------------------------------

    def _response(self, resp: Response, flow: Flow) -> Response | Request:
        checks = flow.state.get("cache.checks")
        if checks and not resp.interim:
            check = checks.pop(id(resp.request), None)
            if check is not None and check[0] is resp.request:
                return self._checked(resp, check[1], check[2], flow)
        fill = self._tracked(resp.request, flow)
        if fill is None or resp.interim:
            return resp
        if resp.status in REDIRECT_STATUSES and self.max_redirects:
            return self._redirect(fill, resp, flow)
        cache_control = (resp.headers.get("cache-control") or "").lower()
        length = resp.headers.get("content-length")
        fill.expected = int(length) if length and length.isdigit() else None
        delimited = fill.expected is not None or resp.version == "HTTP/2" or \
            "chunked" in (resp.headers.get("transfer-encoding") or "").lower()
        why = None
        if resp.status != 200:
            why = f"not kept: status {resp.status}"
        elif "no-store" in cache_control or "private" in cache_control or "content-range" in resp.headers:
            why = "not kept: the server says so"
        elif not delimited:
            why = "not kept: only the end of the connection would tell a cut transfer from a whole one"
        elif fill.expected is not None and fill.expected > self.max_size:
            why = f"not kept: {fill.expected} bytes is more than the cache's max_size"
        if why:
            self._abandon(fill, flow, why)
            return resp
        fill.meta = {"url": fill.url, "stored": time.time(), **({"credentials": True} if fill.credentials else {}),
                     **{name: resp.headers.get(name) for name in ("content-type", "content-encoding", "etag",
                                                                     "last-modified") if name in resp.headers}}
        fill.tmp = self.tmp / f"{fill.key}.{os.getpid()}.{id(fill)}"
        try:
            fill.file = open(fill.tmp, "wb")
        except OSError as e:
            self._abandon(fill, flow, f"cannot write the cache: {e.strerror}")
            return resp
        if resp.body is not None:  # a whole body (a tap before this one asked for it)
            self._write(fill, resp.body)
            self._finish(fill)
        return resp

    def _redirect(self, fill: _Fill, resp: Response, flow: Flow) -> Response | Request:
        """Follow ``resp``, a redirect answering ``fill``'s request, with a request of the tap's
        own, when `follow_redirect` says it may: the client gets the answer to that one, kept
        under ``fill``'s key. Otherwise the client gets the redirect, and nothing is kept."""
        req = fill.request
        where = follow_redirect(resp.status, resp.headers.get("location"), req.url, fill.hops, self.max_redirects,
                                fill.digest)
        if resp.body is None:
            where = "its body is larger than --max-body"
        if isinstance(where, str):
            self._abandon(fill, flow, f"not kept: redirect not followed: {where}")
            return resp
        headers = req.headers.copy()
        if not where.same_origin:
            # Another origin (a CDN with a signed URL) gets no credentials meant for this one,
            # as clients following a redirect do not send them either.
            for name in ("authorization", "cookie"):
                headers.remove(name)
        if "host" in headers:
            headers["Host"] = where.authority
        follow = Request("GET", where.target, headers, version=req.version, scheme=where.scheme,
                         authority=where.authority, body=b"", stream_id=req.stream_id,
                         destination=(where.host, where.port))
        self._untrack(fill)
        fill.request = follow
        fill.hops += 1
        fill.tracked[id(follow)] = fill
        self.log.info("flow {flow_id}: cache: {url} answered {status}; following it to {target}",
                      flow_id=flow.id, url=req.url, status=resp.status, target=where.url)
        return follow

    def _write(self, fill: _Fill, data: bytes) -> None:
        if fill.file is None:
            return
        try:
            fill.file.write(data)
        except OSError as e:
            self.log.warn("cache: cannot write {url}: {error}; not kept", url=fill.url, error=e.strerror)
            self._drop(fill)
            return
        fill.hash.update(data)
        fill.written += len(data)
        if fill.written > self.max_size:
            self.log.info("cache: {url} not kept: larger than the cache's max_size", url=fill.url)
            self._drop(fill)

    def _finish(self, fill: _Fill) -> None:
        self._untrack(fill)
        if fill.file is None:
            self._release(fill, False)
            return
        try:
            self._store(fill)
        except OSError as e:
            self.log.warn("cache: {url} not kept: {error}", url=fill.url, error=e.strerror)
            self._drop(fill)
            self._release(fill, False)

    def _untrack(self, fill: _Fill) -> None:
        fill.tracked.pop(id(fill.request), None)

    def _store(self, fill: _Fill) -> None:
        fill.file.close()
        fill.file = None
        problem = None
        if fill.expected is not None and fill.written != fill.expected:
            problem = f"{fill.written} bytes, the server said {fill.expected}"
        elif fill.digest is not None and fill.hash.hexdigest() != fill.digest:
            problem = f"sha256 {fill.hash.hexdigest()} is not the digest the URL names"
            self.mismatches += 1
        if problem:
            self.log.warn("flow {flow_id}: cache: {url} not kept: {problem}", flow_id=fill.flow_id, url=fill.url,
                          problem=problem)
            fill.tmp.unlink(missing_ok=True)
            self._release(fill, False)
            return
        body = self.objects / fill.key
        meta_tmp = fill.tmp.with_suffix(".json")
        meta_tmp.write_text(json.dumps(fill.meta))
        os.replace(fill.tmp, body)
        os.replace(meta_tmp, self.objects / f"{fill.key}.json")
        self.index[fill.key] = [fill.written, time.time()]
        self.total += fill.written
        self.log.info("cache: stored {url} ({size} bytes)", url=fill.url, size=fill.written)
        self._evict()
        self._release(fill, True)

    def _abandon(self, fill: _Fill, flow: Flow, why: str) -> None:
        self._untrack(fill)
        self.log.info("flow {flow_id}: cache: {url} {why}", flow_id=flow.id, url=fill.url, why=why)
        self._drop(fill)
        self._release(fill, False)

    def _drop(self, fill: _Fill) -> None:
        if fill.file is not None:
            fill.file.close()
            fill.file = None
        if fill.tmp is not None:
            fill.tmp.unlink(missing_ok=True)

    def _release(self, fill: _Fill, stored: bool) -> None:
        if fill.lock is not None:  # after the rename: whoever takes the lock next finds the entry
            self._unlock(fill.key, fill.lock)
            fill.lock = None
        if self._fills.get(fill.key) is fill:
            del self._fills[fill.key]
        waiters, fill.waiters = fill.waiters, []
        for waiting in waiters:
            waiting.callback(stored)

    def _evict(self) -> None:
        while self.total > self.max_size and self.index:
            key = min(self.index, key=lambda k: self.index[k][1])
            size, _ = self.index.pop(key)
            self.total -= size
            for path in (self.objects / key, self.objects / f"{key}.json"):
                path.unlink(missing_ok=True)
            self.log.info("cache: evicted {key} ({size} bytes), least recently used", key=key, size=size)

    def metrics(self) -> list[tuple[str, str, str, int]]:
        """Hits, misses and bytes served from disk, for ``--metrics``."""
        return [("tinspect_cache_hits_total", "counter", "Requests the cache answered from disk.", self.hits),
                ("tinspect_cache_misses_total", "counter", "Cacheable requests that went to the server.", self.misses),
                ("tinspect_cache_served_bytes_total", "counter", "Body bytes the cache served from disk.",
                 self.served_bytes),
                ("tinspect_cache_digest_mismatches_total", "counter",
                 "Downloads not kept because their sha256 was not the digest their URL named.", self.mismatches)]

    def flow_closed(self, flow: Flow) -> None:
        """Fetches of this flow that did not finish leave nothing behind."""
        for fill in flow.state.pop("cache", {}).values():
            if self._fills.get(fill.key) is fill:
                self._drop(fill)
                self._release(fill, False)
                self.log.info("flow {flow_id}: cache: {url} not kept: the transfer was cut", flow_id=flow.id,
                              url=fill.url)

