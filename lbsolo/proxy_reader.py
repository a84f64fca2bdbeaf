"""The parser path of a client connection: the callbacks of its request parser, bytes to `Request`s.

A `RequestReader` is what httptools calls back while it parses a client's bytes (every request
the fast path does not take: a body, a Connection header, anything unusual). It bounds the head
(size, header count), reads it in one pass (what the proxy acts on: Host, framing, Connection,
Expect, Upgrade, a trusted proxy's forwarding headers; the end-to-end headers copied for the app;
the error to answer instead of proxying), queues the request on its connection, and sends the
body where it goes: to the upstream streaming it (`Request.sink`), into the held bodies
(`HeldBodies`) for a buffering route, or into memory while a connection to the app is opened.
It also says how a parse error is answered and when a body being read times out.

What it must not do: import httptools (the connection builds the parser with the reader as its
callbacks, feeds it and catches its errors), write to a socket, or route: a request whose head is
read is handed to the connection, which answers and routes it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from lbsolo.proxy_buffering import CANNOT_HOLD, CannotHold, HeldBodies
from lbsolo.proxy_http import (
    _CONN_PLAIN,
    _MAX_HEAD_BYTES,
    _MAX_HEADERS,
    _P_BUFFER,
    _P_QUEUE,
    _REQ_COPIED,
    _REQ_SPECIAL,
    _REQUEST_ID_OK,
    _X_FORWARDED,
    _BodyTooLarge,
    _HeadTooLarge,
    _now,
    _origin_form,
)
from lbsolo.proxy_request import Request
from lbsolo.proxy_routes import normalize_host

__all__ = ["BODY_BUFFER", "PIPELINE_MAX", "ReaderSettings", "Reading", "RequestReader"]

BODY_BUFFER = 256 * 1024  # request body buffered while connecting before reading pauses
PIPELINE_MAX = 8  # complete requests queued on one client connection before reading pauses


class ReaderSettings(Protocol):
    """The proxy's settings and shared parts a reader uses (`ProxyServer` is one)."""

    header_timeout: float
    read_timeout: float
    body_min_rate: float
    body_grace: float
    bodies: HeldBodies
    request_ids: Iterator[bytes]


class Reading(Protocol):
    """The client connection a reader reads for."""

    deadline: float | None  # when waiting for the client times out
    paused: int  # why reading is paused (a bit set), 0 when it is not
    trusted: bool  # the peer is a trusted proxy
    queue: deque[Request]  # read and not yet answered, in order

    def pause(self, reason: int) -> None: ...

    def forward(self, req: Request, reroute: bool = False) -> None: ...


class RequestReader:
    __slots__ = (
        "_bodies",
        "_body_error",
        "_body_too_large",
        "_conn",
        "_head_bytes",
        "_ids",
        "_loop",
        "_settings",
        "_too_large",
        "parser",
        "parsing",
    )

    def __init__(
        self,
        conn: Reading,
        settings: ReaderSettings,
        loop: asyncio.AbstractEventLoop,
        parser: Callable[[RequestReader], Any],
    ) -> None:
        self._conn = conn
        self._settings = settings
        self._loop = loop
        self._bodies = settings.bodies
        self._ids = settings.request_ids
        self.parsing: Request | None = None  # the request whose bytes are being read
        self._head_bytes = 0
        self._too_large = False  # the head is over its bounds: 431
        self._body_too_large = False  # the body is over its route's limit: 413
        self._body_error: tuple[int, str, str] | None = None  # a held body could not be stored
        self.parser = parser(self)  # httptools' HttpRequestParser, calling back here

    # -- the parser's callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self.parsing = req = Request()
        req.headers = []
        self._head_bytes = 0
        req.started = _now()
        conn = self._conn
        if not conn.paused:
            conn.deadline = self._loop.time() + self._settings.header_timeout

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > _MAX_HEAD_BYTES:
            self._too_large = True
            raise _HeadTooLarge
        req = self.parsing
        assert req is not None
        req.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        req = self.parsing
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
        req = self.parsing
        assert req is not None
        parser = self.parser
        req.headers_done = True
        req.method = parser.get_method()
        req.http11 = parser.get_http_version() not in ("1.0", "0.9")
        req.keep_alive = parser.should_keep_alive()
        req.upgrade = parser.should_upgrade()
        conn = self._conn
        self._read_head(req, conn.trusted)
        if not req.request_id:
            req.request_id = next(self._ids)
        conn.queue.append(req)
        req.body_started = self._loop.time()  # the body's deadline is set once the read is parsed

    def _read_head(self, req: Request, trusted: bool) -> None:
        """Note what the proxy acts on in the parsed head (Host, framing, Connection, Expect, Upgrade,
        the forwarding headers of a trusted proxy), make `req.head` (the request line and the
        end-to-end headers for the app) and set `req.error` when the request must be refused."""
        method = req.method
        upgrade = req.upgrade
        # One pass: note what the proxy acts on, and copy the end-to-end headers for the app.
        hosts = 0
        tokens: set[bytes] | None = None
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

    def on_body(self, data: bytes) -> None:
        req = self.parsing
        assert req is not None
        size = len(data)
        req.received += size
        limit = req.limit
        if limit is not None and req.received > limit:
            self._body_too_large = True
            raise _BodyTooLarge
        sink = req.sink
        if sink is not None:
            sink.send_body(data)
        elif req.finished:
            pass
        elif req.held:
            try:
                if req.spool is not None:
                    self._bodies.write(req, data)
                else:
                    self._bodies.add(req, data)
            except CannotHold:
                self._body_error = CANNOT_HOLD
                raise
        else:
            if req.body:
                req.body.append(data)  # type: ignore[union-attr]
            else:
                req.body = [data]
            req.body_size += size
            if req.body_size > BODY_BUFFER:
                self._conn.pause(_P_BUFFER)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        self.parsing = None
        req.body_done = True
        sink = req.sink
        if sink is not None:
            sink.end_body()
        if req.finished:
            return
        conn = self._conn
        # Waiting for the app: the upstream's deadline applies, not the client's. Reading goes on
        # (pipelined requests queue up) so that a plain keep-alive exchange never pauses the socket.
        conn.deadline = None
        if req.held:
            conn.forward(req, reroute=True)
        if len(conn.queue) >= PIPELINE_MAX:
            conn.pause(_P_QUEUE)

    # -- for the connection --------------------------------------------------------------

    def refusal(self) -> tuple[int, str, str]:
        """How a request that could not be parsed is answered."""
        if self._too_large:
            return 431, "bad_request", "request head too large"
        if self._body_too_large:
            return 413, "bad_request", "request body too large"
        if self._body_error is not None:
            return self._body_error
        return 400, "bad_request", "malformed request"

    def drop(self) -> None:
        """Read no more of the request in progress: it is answered already (the connection closes)."""
        self.parsing = None

    def body_deadline(self, req: Request, now: float) -> float:
        """When reading the rest of `req` times out: no byte for read_timeout, or a body slower on
        average than body_min_rate after body_grace (a slow client cannot hold a connection for ever
        by sending a byte now and then)."""
        settings = self._settings
        idle = now + settings.read_timeout
        rate = settings.body_min_rate
        if rate <= 0:
            return idle
        return min(idle, req.body_started + settings.body_grace + req.received / rate)

    def free_bodies(self, queue: deque[Request]) -> None:
        """The connection ends: give back every body it was holding."""
        free = self._bodies.free
        for req in queue:
            free(req)
        if self.parsing is not None:
            free(self.parsing)
