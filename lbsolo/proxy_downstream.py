"""The client side of lbsolo's proxy: one `_Client` protocol per accepted connection.

Requests are parsed with httptools, except the common one (a whole GET or HEAD with plain
end-to-end headers), which a strict regex reads and a small table remembers. The client keeps
connections alive, answers pipelined requests in order, streams bodies with backpressure, applies
the timeouts and limits, and writes the error pages. The `TargetPool` (proxy_targets) picks
targets and holds the upstream connections; `proxy_upstream` is the app side of an exchange.

What it must not do: log per request or format anything for the access log on the hot path
(`_record` appends a tuple, the server folds them), let one connection break another, or keep
any per-target state of its own (in flight, connecting, queued: the pool's `acquire`/`release`,
`wait`/`connected`). It sees the server only as an `Edge`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol, cast

import httptools

from lbsolo.proxy_http import (
    _CONN_PLAIN,
    _MAX_HEAD_BYTES,
    _MAX_HEADERS,
    _NOT_SIMPLE,
    _P_BROKEN,
    _P_BUFFER,
    _P_EOF,
    _P_QUEUE,
    _P_UPSTREAM,
    _PHRASES,
    _REQ_COPIED,
    _REQ_SPECIAL,
    _REQUEST_ID_OK,
    _SIMPLE_REQUEST,
    _X_FORWARDED,
    _BodyTooLarge,
    _HeadTooLarge,
    _https_redirect,
    _now,
    _origin_form,
    _render_error,
)
from lbsolo.proxy_routes import Route, RouteTable, Target, normalize_host
from lbsolo.proxy_targets import Connection, Slot, TargetPool
from lbsolo.proxy_upstream import Request, _Upstream

log = logging.getLogger("lbsolo.proxy")

# Tuning of the client side.
_UNROUTED = "(unrouted)"  # metrics key of requests that matched no app
_NO_ROUTE = Route(_UNROUTED)
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_BODY_BUFFER = 256 * 1024  # request body buffered while connecting before reading pauses
_PIPELINE_MAX = 8  # complete requests queued on one client connection before reading pauses
_HELD_MEMORY_MAX = 32 * 1024 * 1024  # bodies held in memory by all connections; beyond, they go to files
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_EXPECT_LINE = re.compile(rb"\r\nexpect:[^\r\n]*", re.IGNORECASE)
_REFUSED_BODY = b"too many connections; retry later\n"
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY)
)


class Edge(Protocol):
    """What a client connection reads and counts of the proxy (`ProxyServer` is one)."""

    _loop: asyncio.AbstractEventLoop | None
    pool: TargetPool
    request_ids: Iterator[bytes]
    table: RouteTable
    trusted_proxies: tuple[Any, ...]
    max_connections: int
    max_connections_per_client: int
    refused: int
    connect_timeout: float
    read_timeout: float
    header_timeout: float
    idle_timeout: float
    tunnel_idle_timeout: float
    body_min_rate: float
    body_grace: float
    buffer_memory: int
    buffer_max: int
    buffer_disk: int
    spool_dir: str | None
    _stopping: bool
    _clients: set[Any]
    _per_peer: dict[bytes, int]
    _held_bytes: int
    _spooled_bytes: int
    _finished: list[tuple[Any, ...]]

    @property
    def https_port(self) -> int | None: ...

    def _trusts(self, peer: str) -> bool: ...


# Simple requests already read by the fast path: raw request -> (method, target, Host, head as sent
# to the app, HTTP/1.1, wants JSON errors). Bounded: cleared when full.
_KNOWN_REQUESTS: dict[bytes, tuple[bytes, bytes, bytes, bytes, bool, bool]] = {}


def _read_simple_request(data: bytes) -> tuple[bytes, bytes, bytes, bytes, bool, bool] | None:
    """What the request fast path needs of `data`, or None when it is not exactly one whole GET or
    HEAD with a single Host and no header the proxy acts on (framing, hop-by-hop, forwarding)."""
    found = _SIMPLE_REQUEST(data)
    if found is None or len(data) > _MAX_HEAD_BYTES:
        return None
    method, url, minor, block = found.groups()
    low = block.lower()
    pos = low.find(b"\r\nhost:")
    if (
        pos < 0
        or _NOT_SIMPLE(low) is not None
        or low.find(b"\r\nhost:", pos + 7) >= 0
        or block.count(b"\r\n") > _MAX_HEADERS
    ):
        return None
    end = low.find(b"\r\n", pos + 7)
    host = block[pos + 7 : end if end >= 0 else len(block)].strip()
    accept_json = False
    pos = low.find(b"\r\naccept:")
    if pos >= 0:
        end = low.find(b"\r\n", pos + 9)
        accept = low[pos + 9 : end if end >= 0 else len(low)]
        accept_json = accept.find(b"application/json") >= 0 and accept.find(b"text/html") < 0
    return method, url, host, b"%s %s HTTP/1.1%s\r\n" % (method, url, block), minor == b"1", accept_json


class _Client(asyncio.Protocol):
    __slots__ = (
        "_active",
        "_body_error",
        "_body_too_large",
        "_bytes_in",
        "_bytes_out",
        "_closed",
        "_connect_task",
        "_cork",
        "_counted",
        "_eof",
        "_head_bytes",
        "_ids",
        "_in_mark",
        "_leftover",
        "_loop",
        "_lost",
        "_out_mark",
        "_parser",
        "_parsing",
        "_paused",
        "_paused_at",
        "_peer",
        "_pool",
        "_proto",
        "_pumping",
        "_queue",
        "_served",
        "_server",
        "_slot",
        "_too_large",
        "_trusted",
        "_tunnel",
        "_up",
        "_upgrade_wait",
        "_waiting_for",
        "_write_paused",
        "deadline",
        "transport",
        "write_deadline",
    )

    def __init__(self, server: Edge, https: bool = False) -> None:
        self._server = server
        self._proto = b"https" if https else b"http"
        self._loop = server._loop
        self._pool = server.pool
        self._ids = server.request_ids
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._peer = b""
        self._trusted = False  # the peer is a trusted proxy: its forwarding headers are believed
        self._queue: deque[Request] = deque()
        self._parsing: Request | None = None
        self._head_bytes = 0
        self._too_large = False
        self._body_too_large = False
        self._body_error: tuple[int, str, str] | None = None  # a held body could not be stored
        self.deadline: float | None = None  # waiting for the client to send
        self.write_deadline: float | None = None  # waiting for the client to read
        self._paused = 0
        self._paused_at = 0.0  # loop time reading paused (the body rate does not count it)
        self._counted = False  # counted in the server's connections per client address
        self._write_paused = False
        self._up: _Upstream | None = None
        self._active: Request | None = None
        self._pumping = False
        self._connect_task: asyncio.Task[None] | None = None
        self._closed = False
        self._lost = False
        self._eof = False
        self._cork: list[bytes] | None = None
        self._leftover = b""
        self._upgrade_wait = False
        self._tunnel = False
        self._served = 0
        self._slot: Slot | None = None  # the target the current exchange (or tunnel) goes to, for drain
        self._waiting_for: Slot | None = None  # queued for a connection to this target
        self._bytes_in = self._bytes_out = 0  # on this connection; the marks are where the last request ended
        self._in_mark = self._out_mark = 0

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        server = self._server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._peer = str(peer[0]).encode()
            if server.trusted_proxies:
                self._trusted = server._trusts(str(peer[0]))
        clients = server._clients
        per_peer = server._per_peer
        # Caps: one address (a trusted proxy speaks for many clients: not capped) and everyone.
        if len(clients) >= server.max_connections or (
            not self._trusted and per_peer.get(self._peer, 0) >= server.max_connections_per_client
        ):
            server.refused += 1
            self._closed = True
            self.transport.write(_REFUSED)
            self.transport.close()
            return
        clients.add(self)
        per_peer[self._peer] = per_peer.get(self._peer, 0) + 1
        self._counted = True
        if server._stopping:
            self._close()
            return
        self.deadline = self._loop.time() + server.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._lost = True
        self.deadline = None
        server = self._server
        server._clients.discard(self)
        if self._counted:
            self._counted = False
            per_peer = server._per_peer
            left = per_peer.get(self._peer, 1) - 1
            if left > 0:
                per_peer[self._peer] = left
            else:
                per_peer.pop(self._peer, None)
        self._detach_upstream()
        self._free_bodies()

    def data_received(self, data: bytes) -> None:
        self._bytes_in += len(data)
        if self._tunnel:
            up = self._up
            if up is not None:
                up._write(data)
                self.deadline = self._loop.time() + self._server.tunnel_idle_timeout
            return
        if self._closed or self._paused & _P_BROKEN:
            return
        if self._upgrade_wait:
            self._leftover += data
            return
        if self._parsing is None and not self._queue and not self._paused and data.endswith(b"\r\n\r\n"):
            req = self._simple_request(data)
            if req is not None:  # nothing else is queued or in progress: it goes out at once
                self._queue.append(req)
                self._active = req
                self._dispatch(req)
                return
        self._feed(data)

    def eof_received(self) -> bool | None:
        if self._tunnel or self._parsing is not None or not self._queue:
            self._close()
            return False
        # Half-closed after a complete request: answer it, then close.
        self._eof = True
        self._paused |= _P_EOF
        self.deadline = None
        return True

    def pause_writing(self) -> None:
        self._write_paused = True
        self.write_deadline = self._loop.time() + self._server.read_timeout
        up = self._up
        if up is not None:
            up._pause_read()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_deadline = None
        up = self._up
        if up is not None:
            up._resume_read()

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = req = Request()
        req.headers = []
        self._head_bytes = 0
        req.started = _now()
        if not self._paused:
            self.deadline = self._loop.time() + self._server.header_timeout

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > _MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge
        req = self._parsing
        assert req is not None
        req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        req = self._parsing
        assert req is not None
        if req.headers_done:  # trailers: counted, dropped
            if self._head_bytes > 2 * _MAX_HEAD_BYTES:
                raise _HeadTooLarge
            return
        headers = req.headers
        if self._head_bytes > _MAX_HEAD_BYTES or len(headers) >= _MAX_HEADERS:
            self._too_large = True
            raise _HeadTooLarge
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        req = self._parsing
        assert req is not None
        parser = self._parser
        req.headers_done = True
        req.method = method = parser.get_method()
        req.http11 = parser.get_http_version() not in ("1.0", "0.9")
        req.keep_alive = parser.should_keep_alive()
        req.upgrade = upgrade = parser.should_upgrade()
        # One pass: note what the proxy acts on, and copy the end-to-end headers for the app.
        hosts = 0
        tokens: set[bytes] | None = None
        trusted = self._trusted
        parts = [method, b" ", req.url, b" HTTP/1.1\r\n"]
        extend = parts.extend
        for name, value in req.headers:
            lname = name.lower()
            if lname not in _REQ_SPECIAL:
                if trusted or not lname.startswith(_X_FORWARDED):
                    extend((name, b": ", value, b"\r\n"))
                continue
            if lname == b"host":
                hosts += 1
                req.host = value.rstrip()  # httptools strips leading whitespace only
                extend((name, b": ", value, b"\r\n"))
            elif lname == b"connection":
                if tokens is None:
                    tokens = set()
                tokens.update(t.strip().lower() for t in value.split(b","))
            elif lname == b"transfer-encoding":
                req.chunked = True
                if value.rpartition(b",")[2].strip().lower() != b"chunked":
                    req.error = (400, "bad_request", "unsupported Transfer-Encoding")
            elif lname == b"content-length":
                req.has_length = True
                if value.isdigit():
                    req.content_length = int(value)
                if not upgrade:  # an upgrade request has no body: its framing is not passed on
                    extend((name, b": ", value, b"\r\n"))
            elif lname == b"x-request-id":
                if _REQUEST_ID_OK(value):
                    req.request_id = value
            elif lname == b"accept":
                low = value.lower()
                req.accept_json = b"application/json" in low and b"text/html" not in low
                extend((name, b": ", value, b"\r\n"))
            elif lname == b"expect":
                req.expect_continue = value.strip().lower() == b"100-continue"
                extend((name, b": ", value, b"\r\n"))
            elif lname == b"upgrade":
                req.upgrade_value = value
            elif not trusted:
                pass  # who the client is comes from the connection, not from what it says
            elif lname == b"x-forwarded-for":
                req.xff = value if not req.xff else req.xff + b", " + value
            elif lname == b"x-forwarded-proto":
                if value.lower() in (b"http", b"https"):
                    req.proto = value.lower()
            elif lname != b"x-forwarded-host":  # Forwarded, X-Real-IP of a trusted proxy
                extend((name, b": ", value, b"\r\n"))
        if tokens:
            tokens -= _CONN_PLAIN
            tokens.discard(b"host")
            if tokens:  # the client named more hop-by-hop headers: copy again without them
                del parts[4:]
                for name, value in req.headers:
                    lname = name.lower()
                    if lname in tokens or (upgrade and lname == b"content-length"):
                        continue
                    if lname in _REQ_SPECIAL:
                        keep = lname in _REQ_COPIED or (trusted and lname in (b"forwarded", b"x-real-ip"))
                    else:
                        keep = trusted or not lname.startswith(_X_FORWARDED)
                    if keep:
                        extend((name, b": ", value, b"\r\n"))
        url = req.url
        if url[:1] != b"/" and url != b"*" and method != b"CONNECT":
            # Absolute form (`GET http://host/path`): the app gets the path, and the URL's host must
            # be the one the request is routed by.
            origin = _origin_form(url)
            if origin is None:
                req.error = (400, "bad_request", "the request target must be a path or an http(s) URL")
            else:
                authority, req.url = origin
                parts[2] = req.url
                if hosts == 0 and not req.http11:  # HTTP/1.0 may leave Host out
                    hosts = 1
                    req.host = authority
                    parts.insert(4, b"Host: %s\r\n" % authority)
                elif hosts and normalize_host(authority) != normalize_host(req.host):
                    req.error = (400, "bad_request", "the request target's host is not the Host header's")
        req.head = b"".join(parts)
        if not req.request_id:
            req.request_id = next(self._ids)
        if method == b"CONNECT":
            req.error = (405, "method_not_allowed", "CONNECT is not supported by this proxy")
        elif hosts > 1 or (hosts == 0 and req.http11):
            req.error = (400, "bad_request", "missing or duplicate Host header")
        elif req.chunked and req.has_length:
            # Request smuggling: front and back ends could disagree on where this body ends.
            req.error = (400, "bad_request", "both Content-Length and Transfer-Encoding")
        if upgrade:
            if req.error is None and (req.chunked or req.content_length):
                # llhttp reads no body before an upgrade; an app server that does would take the next
                # bytes on the upstream connection (someone else's request) as this one's body.
                req.error = (400, "bad_request", "an upgrade request cannot carry a body")
            req.chunked = False
        self._queue.append(req)
        req.body_started = self._loop.time()  # the body's deadline is set once the read is parsed (_feed)

    def _body_deadline(self, req: Request, now: float) -> float:
        """When reading the rest of `req` times out: no byte for read_timeout, or a body slower on
        average than body_min_rate after body_grace (a slow client cannot hold a connection for ever
        by sending a byte now and then)."""
        server = self._server
        idle = now + server.read_timeout
        rate = server.body_min_rate
        if rate <= 0:
            return idle
        return min(idle, req.body_started + server.body_grace + req.received / rate)

    def on_body(self, data: bytes) -> None:
        req = self._parsing
        assert req is not None
        size = len(data)
        req.received += size
        limit = req.limit
        if limit is not None and req.received > limit:
            self._body_too_large = True
            raise _BodyTooLarge
        sink = req.sink
        if sink is not None:
            sink._send_body(data)
        elif req.spool is not None:
            server = self._server
            if server._spooled_bytes + size > server.buffer_disk:
                self._cannot_hold()
                raise _BodyTooLarge
            try:
                req.spool.write(data)
            except OSError:
                self._cannot_hold()
                raise
            req.spooled += size
            server._spooled_bytes += size
        elif not req.finished:
            if req.body:
                req.body.append(data)
            else:
                req.body = [data]
            req.body_size += size
            if req.held:
                server = self._server
                server._held_bytes += size
                if req.body_size > server.buffer_memory or server._held_bytes > _HELD_MEMORY_MAX:
                    try:
                        self._spill(req)
                    except OSError:
                        self._cannot_hold()
                        raise
            elif req.body_size > _BODY_BUFFER:
                self._pause(_P_BUFFER)

    def _spill(self, req: Request) -> None:
        """Move a held body from memory to an unlinked temp file, where the rest of it goes too."""
        server = self._server
        size = req.body_size
        if server._spooled_bytes + size > server.buffer_disk:
            self._cannot_hold()
            raise _BodyTooLarge
        spool = tempfile.TemporaryFile(dir=server.spool_dir)  # noqa: SIM115 - closed with the request
        try:
            spool.writelines(req.body)
        except BaseException:
            spool.close()
            raise
        req.spool = spool
        req.spooled = size
        server._spooled_bytes += size
        server._held_bytes -= size
        req.body = ()
        req.body_size = 0

    def _cannot_hold(self) -> None:
        server = self._server
        if server._spooled_bytes < server.buffer_disk:  # a failed write, not the budget: say so
            log.warning("proxy: cannot store a request body in %s", server.spool_dir or tempfile.gettempdir())
        self._body_error = (503, "buffer_unavailable", "the proxy cannot take request bodies now; retry later")

    def _free_body(self, req: Request) -> None:
        if req.held:
            self._server._held_bytes -= req.body_size
        req.body = ()
        req.body_size = 0
        spool = req.spool
        if spool is not None:
            req.spool = None
            self._server._spooled_bytes -= req.spooled
            req.spooled = 0
            spool.close()

    def _free_bodies(self) -> None:
        for req in self._queue:
            self._free_body(req)
        if self._parsing is not None:
            self._free_body(self._parsing)

    def on_message_complete(self) -> None:
        req = self._parsing
        assert req is not None
        self._parsing = None
        req.body_done = True
        sink = req.sink
        if sink is not None:
            sink._end_body()
        if req.held and not req.finished:
            self.deadline = None
            self._forward(req, reroute=True)
            if len(self._queue) >= _PIPELINE_MAX:
                self._pause(_P_QUEUE)
            return
        if not req.finished:
            # Waiting for the app: the upstream's deadline applies, not the client's. Reading goes on
            # (pipelined requests queue up) so that a plain keep-alive exchange never pauses the socket.
            self.deadline = None
            if len(self._queue) >= _PIPELINE_MAX:
                self._pause(_P_QUEUE)

    # -- parsing -------------------------------------------------------------------------

    def _simple_request(self, data: bytes) -> Request | None:
        """The fast path: `data` is exactly one whole GET or HEAD with plain end-to-end headers.

        Most requests arrive so; they skip the parser's callbacks. None, having changed nothing,
        for anything else: the parser path takes it and answers or rejects it.
        """
        # Clients repeat the very same request head (pollers, health checks, API clients): what it
        # means is worked out once and remembered.
        known = _KNOWN_REQUESTS.get(data)
        if known is None:
            known = _read_simple_request(data)
            if known is None:
                return None
            if len(data) <= 2048:
                if len(_KNOWN_REQUESTS) >= 256:
                    _KNOWN_REQUESTS.clear()
                _KNOWN_REQUESTS[data] = known
        req = Request()
        req.started = _now()
        req.method, req.url, req.host, req.head, http11, req.accept_json = known
        req.http11 = req.keep_alive = http11  # HTTP/1.0 keeps alive only when asked (not simple)
        req.headers_done = req.body_done = True
        req.request_id = next(self._ids)
        self.deadline = None  # waiting for the app now: the upstream's deadline applies
        return req

    def _feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_wait = True
            self._leftover = data[exc.args[0] :] if exc.args else b""
            self._pause(_P_QUEUE)  # until the app accepts or declines the upgrade
        except httptools.HttpParserError as exc:
            self._on_parse_error(exc)
        except Exception:
            log.exception("proxy: internal error while parsing a request")
            self._abort()
            return
        self._pump()
        req = self._parsing
        if req is not None and req.headers_done and not self._paused:
            # A body is still coming: one deadline per read, not per callback (most bodies come whole).
            if req.received:
                self.deadline = self._body_deadline(req, self._loop.time())
            else:  # none of it yet: the same deadline, counted from when the head was read
                server = self._server
                wait = server.read_timeout
                if server.body_min_rate > 0 and server.body_grace < wait:
                    wait = server.body_grace
                self.deadline = req.body_started + wait

    def _on_parse_error(self, exc: Exception) -> None:
        self._pause(_P_BROKEN)
        queue = self._queue
        if queue and not queue[-1].keep_alive and self._parsing is None:
            return  # bytes after a `Connection: close` request: ignored
        code = "bad_request"
        if self._too_large:
            status, message = 431, "request head too large"
        elif self._body_too_large:
            status, message = 413, "request body too large"
        elif self._body_error is not None:
            status, code, message = self._body_error
        else:
            status, message = 400, "malformed request"
        log.debug("proxy: bad request from %s: %s", self._peer.decode(), exc)
        cur = self._parsing
        self._parsing = None
        if cur is not None and cur.headers_done:
            # The error is inside the body of a request already queued.
            if cur is self._active:
                up = self._up
                if up is not None:
                    self._up = None
                    cur.sink = None
                    up._abandon()
                if cur.responded:
                    self._close()
                else:
                    self._send_error(cur, status, code, message, close=True)
            else:
                cur.error = (status, code, message)
            return
        bad = Request()
        bad.error = (status, code, message)
        bad.body_done = True
        queue.append(bad)

    # -- request dispatch ----------------------------------------------------------------

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._queue and self._active is None and not self._closed:
                req = self._queue[0]
                self._active = req
                self._dispatch(req)
        finally:
            self._pumping = False

    def _dispatch(self, req: Request) -> None:
        if req.error is not None:
            self._send_error(req, *req.error, close=True)
            return
        server = self._server
        table = server.table
        hit = table.by_raw_host.get(req.host)
        route = hit[0] if hit is not None and hit[1] is None else table.match_raw(req.host, req.url)
        if route is None:
            host = normalize_host(req.host) or "(none)"
            self._send_error(req, 404, "not_found", f"no app is served at {host}")
            return
        if route.https_redirect and self._proto == b"http" and (port := server.https_port) is not None:
            # The app is HTTPS-only: answer 308 here; the app never sees plain HTTP. One flag read
            # per request otherwise.
            req.route = route
            keep = self._keep_alive(req)  # a body not yet read is not read: the connection closes
            self._write(_https_redirect(normalize_host(req.host), req.url, port, req.request_id, keep, req.http11))
            req.status = 308
            req.responded = True
            self._finish(req, close=not keep)
            return
        if not route.targets:
            self._send_error(req, 503, "app_not_running", f"app {route.app} is not running")
            return
        req.route = route
        if req.body_done and not req.received:  # most requests: no body, nothing to hold or cap
            self._forward(req)
            return
        limit = route.max_body
        buffered = route.request_buffering and not req.upgrade
        hold = buffered and not req.body_done  # a body that came whole with its head is sent on at once
        if buffered and (limit is None or limit > server.buffer_max):
            limit = server.buffer_max  # a buffered body is capped by the proxy's bound too, however it came
        if limit is not None:
            if req.content_length > limit or req.received > limit:
                # Not read any further: the connection cannot be reused.
                self._pause(_P_BROKEN)
                self._parsing = None
                self._send_error(
                    req, 413, "body_too_large", f"the body limit of app {route.app} is {limit} bytes", close=True
                )
                return
            req.limit = limit
        if hold:
            # Read the whole body first (on_message_complete forwards it): a slow client then costs
            # the app nothing, whatever its workers.
            req.held = True
            if req.body:  # what came before it was routed is counted now
                server._held_bytes += req.body_size
                if req.body_size > server.buffer_memory or server._held_bytes > _HELD_MEMORY_MAX:
                    try:
                        self._spill(req)
                    except (OSError, _BodyTooLarge):
                        self._cannot_hold()
                        self._pause(_P_BROKEN)
                        self._parsing = None
                        status, code, message = self._body_error  # type: ignore[misc]
                        self._send_error(req, status, code, message, close=True)
                        return
            if req.expect_continue:
                req.head = _EXPECT_LINE.sub(b"", req.head, count=1)  # answered here, not by the app
                if not req.received:
                    self._write(_CONTINUE)
            if self._paused & _P_BUFFER:
                self._resume(_P_BUFFER)
            return
        self._forward(req)

    def _forward(self, req: Request, reroute: bool = False) -> None:
        """Send a routed request to one of its app's targets: a pooled connection, or a new one.

        `reroute`: the request was held while its body came, and its app's route may have changed.
        """
        server = self._server
        route = req.route
        assert route is not None
        if reroute:
            current = server.table.routes.get(route.app)
            if current is not None:
                req.route = route = current
        targets = route.targets
        if not targets:
            self._send_error(req, 503, "app_not_running", f"app {route.app} is not running")
            return
        pool = self._pool
        target = targets[0] if len(targets) == 1 else pool.pick(targets)
        slot = self._slot
        if slot is None:  # the usual case: the last exchange released its target
            self._slot = slot = pool.acquire(target)
        elif slot.target is not target and slot.target != target:
            slot = self._track(target)
        up = pool.take_idle(slot)
        if up is not None:
            self._begin(req, up, reused=True)  # type: ignore[arg-type]
        elif pool.wait(slot, self):
            # Enough connections are being opened to this target: wait for one of them, or for one
            # that frees up (take, connect).
            self._waiting_for = slot
        else:
            self._connect_task = self._loop.create_task(self._connect(req, target))

    async def _connect(self, req: Request, first: Target) -> None:
        """Open a connection to `first`, else to the route's other targets (nothing was sent yet)."""
        try:
            await self._connect_to(req, first)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must not leave the client waiting forever
            log.exception("proxy: internal error while connecting to an app")
            self._connect_task = None
            if not self._closed and self._active is req and not req.responded:
                self._send_error(req, 502, "bad_gateway", "internal proxy error", close=True)
            else:
                self._abort()

    async def _connect_to(self, req: Request, first: Target) -> None:
        server = self._server
        pool = self._pool
        route = req.route
        assert route is not None
        reason = "refused"
        tried: list[Target] = []
        target: Target | None = first
        while target is not None:
            tried.append(target)
            slot = self._track(target)
            pool.connecting(slot)
            counted = True
            try:
                async with asyncio.timeout(server.connect_timeout):
                    _, up = await self._loop.create_connection(
                        lambda t=target: _Upstream(pool, t, server), target.host, target.port
                    )
            except TimeoutError:
                reason = "timed out"
                pool.eject(target)
                log.warning("proxy: connecting to %s:%s for app %s timed out", target.host, target.port, route.app)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                pool.eject(target)
                log.warning("proxy: cannot connect to %s:%s for app %s: %s", target.host, target.port, route.app, exc)
            else:
                self._connect_task = None
                counted = False
                pool.connected(slot)
                if self._closed or self._active is not req:
                    pool.put_idle(up)  # a fresh connection: someone else can use it
                    return
                self._begin(req, up, reused=False)
                return
            finally:
                if counted:  # failed or cancelled
                    pool.connected(slot)
            current = server.table.routes.get(route.app)
            target = pool.pick_other(current.targets if current is not None else (), tried)
        self._connect_task = None
        if not self._closed and self._active is req:
            self._send_error(req, 502, "bad_gateway", f"app {route.app} is unreachable (connection {reason})")

    def _begin(self, req: Request, up: _Upstream, reused: bool) -> None:
        self._up = up
        up._begin(self, req, reused)
        if self._write_paused:
            up._pause_read()
        if self._paused & _P_BUFFER:
            self._resume(_P_BUFFER)

    def _retry(self, req: Request) -> None:
        """Send an idempotent request again on a fresh connection, to the least busy target."""
        route = self._server.table.routes.get(req.route.app) if req.route is not None else None
        if route is None or not route.targets:
            self._send_error(req, 502, "bad_gateway", "app closed the connection")
            return
        req.attempts += 1
        req.route = route
        target = self._pool.pick(route.targets)
        self._track(target)
        self._connect_task = self._loop.create_task(self._connect(req, target))

    # -- in-flight accounting (drain) -----------------------------------------------------

    def _track(self, target: Target) -> Slot:
        """Count this connection's current exchange (or tunnel) against `target`."""
        old = self._slot
        if old is not None:
            if old.target is target or old.target == target:
                return old
            self._slot = None
            self._pool.release(old)
        self._slot = slot = self._pool.acquire(target)
        return slot

    def _untrack(self) -> None:
        slot = self._slot
        if slot is not None:
            self._slot = None
            self._pool.release(slot)

    # The pool's `Waiter`: queued for a connection to a busy target.

    def claim(self, slot: Slot) -> bool:
        if self._waiting_for is slot and not self._closed and self._active is not None:
            self._waiting_for = None
            return True
        return False

    def take(self, up: Connection) -> None:
        req = self._active
        assert req is not None
        self._begin(req, up, reused=True)  # type: ignore[arg-type]

    def connect(self, target: Target) -> None:
        req = self._active
        assert req is not None
        self._connect_task = self._loop.create_task(self._connect(req, target))

    # -- responses -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        cork = self._cork
        if cork is not None:
            cork.append(data)
        elif not self._closed:
            self._bytes_out += len(data)
            self.transport.write(data)  # type: ignore[union-attr]

    def _keep_alive(self, req: Request) -> bool:
        return req.keep_alive and req.body_done and not self._eof and not self._server._stopping

    def _send_error(
        self,
        req: Request,
        status: int,
        code: str,
        message: str,
        *,
        close: bool = False,
    ) -> None:
        keep = not close and self._keep_alive(req)
        body, ctype = _render_error(status, code, message, req.accept_json)
        if not req.request_id:
            req.request_id = next(self._ids)
        req.status = status
        parts = [
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
            b"X-Request-Id: %s\r\n" % (status, _PHRASES[status], ctype, len(body), req.request_id)
        ]
        if not keep:
            parts.append(b"Connection: close\r\n")
        elif not req.http11:
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if req.method != b"HEAD":
            parts.append(body)
        self._write(b"".join(parts))
        req.responded = True
        self._finish(req, close=not keep)

    def _finish(self, req: Request, close: bool) -> None:
        """The response to `req` (the head of the queue) is complete."""
        req.finished = True
        req.sink = None
        if req.spool is not None:
            self._free_body(req)
        elif req.body:
            if req.held:
                self._server._held_bytes -= req.body_size
                req.body_size = 0
            req.body = ()
        queue = self._queue
        if queue and queue[0] is req:
            queue.popleft()
        self._active = None
        self._up = None
        self._served += 1
        slot = self._slot
        if slot is not None:
            self._slot = None
            self._pool.release(slot)
        self._record(req)
        if close or self._closed or self._eof:
            self._close()
            return
        if not queue and not self._paused and not self._upgrade_wait and self._parsing is None:
            # The usual end of a keep-alive exchange: wait for the next request.
            if self._server._stopping:
                self._close()
            else:
                self.deadline = self._loop.time() + self._server.idle_timeout
            return
        if self._paused & _P_UPSTREAM:
            self._resume(_P_UPSTREAM)
        if self._upgrade_wait and not queue:
            # The app declined the upgrade: what followed is HTTP again.
            self._upgrade_wait = False
            data, self._leftover = self._leftover, b""
            if data:
                self._feed(data)
                if self._closed:
                    return
        if self._paused & _P_QUEUE and len(queue) < _PIPELINE_MAX:
            self._resume(_P_QUEUE)
        elif not self._paused and not queue and self._parsing is None:
            self.deadline = self._loop.time() + self._server.idle_timeout
        if self._server._stopping and not queue and self._parsing is None:
            self._close()
            return
        if queue:
            self._pump()

    def _record(self, req: Request) -> None:
        """Note a finished exchange. Its app's metrics and its access-log line are made from the note
        off the hot path (`ProxyServer._fold`)."""
        now = _now()
        bytes_in = self._bytes_in
        bytes_out = self._bytes_out
        route = req.route or _NO_ROUTE
        self._server._finished.append(
            (
                now,
                route.app,
                route.release,
                req.method,
                req.url,
                req.status,
                bytes_in - self._in_mark,
                bytes_out - self._out_mark,
                now - req.started,
                req.upstream_time,
                req.request_id,
                self._peer,
            )
        )
        self._in_mark = bytes_in
        self._out_mark = bytes_out

    def _upstream_failed(self, req: Request, status: int, code: str, message: str, retry: bool) -> None:
        self._up = None
        req.sink = None
        if self._closed or self._active is not req:
            return
        if req.responded:
            self._close()
            return
        if retry and req.attempts == 0 and req.replayable and req.method in _IDEMPOTENT:
            self._retry(req)
            return
        self._send_error(req, status, code, message)

    def _start_tunnel(self, up: _Upstream, tail: bytes) -> None:
        self._tunnel = True
        self._upgrade_wait = False
        self.deadline = self._loop.time() + self._server.tunnel_idle_timeout  # moved on by bytes either way
        leftover, self._leftover = self._leftover, b""
        if tail:
            self._write(tail)
        if leftover:
            up._write(leftover)
        self._resume(_P_QUEUE)

    # -- flow control & lifecycle --------------------------------------------------------

    def _pause(self, reason: int) -> None:
        if not self._paused and not self._closed:
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.deadline = None
            self._paused_at = self._loop.time()
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if self._paused or self._closed:
            return
        self.transport.resume_reading()  # type: ignore[union-attr]
        server = self._server
        now = self._loop.time()
        if self._tunnel:
            self.deadline = now + server.tunnel_idle_timeout
            return
        req = self._parsing
        if req is not None:
            if req.headers_done:
                req.body_started += now - self._paused_at  # time the proxy did not read is not the client's
                self.deadline = self._body_deadline(req, now)
            else:
                self.deadline = now + server.header_timeout
        elif not self._queue:
            self.deadline = now + (server.idle_timeout if self._served else server.header_timeout)
        else:
            self.deadline = None

    def _on_timeout(self) -> None:
        self.deadline = self.write_deadline = None
        log.debug("proxy: client %s timed out", self._peer.decode())
        req = self._parsing
        queue = self._queue
        # A request arriving too slowly (slowloris) gets 408 if it is the next one to be answered.
        if (
            req is not None
            and not self._write_paused
            and not self._closed
            and ((not req.headers_done and not queue) or (req.headers_done and queue[0] is req and not req.responded))
        ):
            self._detach_upstream()
            self._pause(_P_BROKEN)
            self._parsing = None
            self._send_error(req, 408, "request_timeout", "the request was not received in time", close=True)
            return
        self._close()

    def _shutdown_if_idle(self) -> None:
        if self._tunnel or (not self._queue and self._parsing is None):
            self._close()

    def _detach_upstream(self) -> None:
        self._waiting_for = None  # skipped when its turn comes
        self._untrack()
        task = self._connect_task
        if task is not None:
            self._connect_task = None
            task.cancel()
        up = self._up
        if up is not None:
            self._up = None
            if self._tunnel:
                up.close()
            else:
                up._abandon()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.deadline = None
        self._detach_upstream()
        self._free_bodies()
        self.transport.close()  # type: ignore[union-attr]

    def _abort(self) -> None:
        self._closed = True
        self.deadline = None
        self._detach_upstream()
        self._free_bodies()
        if self.transport is not None and not self._lost:
            self.transport.abort()
