"""lbsolo's HTTP/1.1 reverse proxy: routes `<app>.<domain>` to the app's running replicas.

It runs inside the daemon's event loop (uvloop or the default loop). Client connections are
`asyncio.Protocol`s parsed with httptools; upstream responses are parsed with httptools too.
Bodies are streamed in both directions with transport-level backpressure, never buffered whole.
Upstream connections are kept alive in a small per-target idle pool. WebSocket and other
`Upgrade` requests become a raw byte tunnel once the app answers `101 Switching Protocols`.

What it must not do: know about containers, releases or state. It never imports docker,
tinydb or any other lbsolo module. The core decides routes and pushes them in with
`ProxyServer.set_routes`; the proxy only reads the current immutable `RouteTable` snapshot.
It must never let one client connection break another, and never log per request at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus
from types import MappingProxyType
from typing import Any, NamedTuple, cast

import httptools

from lbsolo.proxy_metrics import AppStats, access_line, prometheus_text

__all__ = ["ProxyServer", "Route", "RouteTable", "Target", "normalize_host"]

log = logging.getLogger("lbsolo.proxy")


class Target(NamedTuple):
    """One upstream address (a replica's published port). A tuple: hashing it is cheap (hot path)."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Route:
    """Where an app's traffic goes; no targets means the app is not running (503)."""

    app: str
    release: str | None = None
    targets: tuple[Target, ...] = ()
    max_body: int | None = None  # bytes; larger request bodies get 413
    # Custom domains also routed to the app (any case, any port), each optionally with a path
    # prefix that only this app serves on that domain: ("example.com", "shop.example.com/api").
    domains: tuple[str, ...] = ()


def normalize_host(value: str | bytes | None) -> str:
    """A Host header value reduced to the host: lowercase, no port, no trailing dot.

    IPv6 literals keep their brackets (`[::1]:8080` -> `[::1]`); "" when missing.
    """
    if not value:
        return ""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    host = value.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end != -1:
            host = host[: end + 1]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    if host.endswith("."):
        host = host[:-1]
    return host


def _split_domain(entry: str) -> tuple[str, str]:
    """A `Route.domains` entry as (normalized host, path prefix without a trailing slash, or "")."""
    host, slash, path = entry.strip().partition("/")
    prefix = ("/" + path).rstrip("/") if slash else ""
    return normalize_host(host), prefix


def _under(path: bytes, prefix: bytes) -> bool:
    """Whether a request target's path is `prefix` or below it (`/api` matches `/api`, `/api/x`, `/api?q`)."""
    if not path.startswith(prefix):
        return False
    rest = path[len(prefix) : len(prefix) + 1]
    return rest in (b"", b"/", b"?")


class RouteTable:
    """Immutable snapshot of the routes; pure decisions, no I/O.

    A request is routed by its Host: a custom domain of a route (`Route.domains`, optionally with a
    path prefix: `example.com/api`; the longest matching prefix wins), else `<app>.<domain>`.
    """

    __slots__ = ("_by_host", "_by_name", "_by_raw", "_prefixed", "_suffix", "_targets", "domain", "routes")

    def __init__(self, domain: str, routes: Mapping[str, Route] | None = None) -> None:
        self.domain: str = normalize_host(domain).strip(".")
        self._suffix = "." + self.domain
        copied: dict[str, Route] = {}
        for name, route in (routes or {}).items():
            if not isinstance(route.targets, tuple) or not isinstance(route.domains, tuple):
                route = replace(route, targets=tuple(route.targets), domains=tuple(route.domains))
            copied[name] = route
        self.routes: Mapping[str, Route] = MappingProxyType(copied)
        self._by_name = {name.lower(): route for name, route in copied.items()}
        self._targets = frozenset(t for r in copied.values() for t in r.targets)
        self._by_host: dict[str, Route] = {}  # custom domain -> route
        prefixed: dict[str, list[tuple[bytes, Route]]] = {}  # custom domain -> [(path prefix, route)]
        for name in sorted(copied):  # the first app (by name) to claim a domain keeps it
            route = copied[name]
            for entry in route.domains:
                host, prefix = _split_domain(entry)
                if not host:
                    continue
                if prefix:
                    prefixed.setdefault(host, []).append((prefix.encode(), route))
                else:
                    self._by_host.setdefault(host, route)
        self._prefixed = {h: sorted(v, key=lambda pr: -len(pr[0])) for h, v in prefixed.items()}
        # raw Host header -> (route by host alone, path-prefix routes of that host), filled as hosts are seen
        self._by_raw: dict[bytes, tuple[Route | None, list[tuple[bytes, Route]] | None]] = {}

    def match_raw(self, raw_host: bytes, target: bytes = b"/") -> Route | None:
        """`match` for a raw Host header value and request target, memoized (the per-request lookup)."""
        try:
            route, prefixes = self._by_raw[raw_host]
        except KeyError:
            host = normalize_host(raw_host)
            route, prefixes = self._match_host(host), self._prefixed.get(host)
            if len(self._by_raw) < 4096:  # bounded: clients choose the Host header
                self._by_raw[raw_host] = (route, prefixes)
        if prefixes is not None:
            for prefix, candidate in prefixes:
                if _under(target, prefix):
                    return candidate
        return route

    def match(self, host: str, path: str = "/") -> Route | None:
        """The route for an already normalized host (and a request path); None when no app is there."""
        prefixes = self._prefixed.get(host)
        if prefixes is not None:
            raw = path.encode("latin-1")
            for prefix, route in prefixes:
                if _under(raw, prefix):
                    return route
        return self._match_host(host)

    def _match_host(self, host: str) -> Route | None:
        route = self._by_host.get(host)
        if route is not None:
            return route
        suffix = self._suffix
        if not host.endswith(suffix):
            return None
        label = host[: -len(suffix)]
        if not label or "." in label:
            return None
        return self._by_name.get(label)

    def apps(self) -> list[str]:
        return sorted(self.routes)

    def targets(self) -> frozenset[Target]:
        """Every target of every route."""
        return self._targets


# ---------------------------------------------------------------------------------------------
# protocol constants

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Request headers never forwarded as sent: hop-by-hop ones and those the proxy sets itself.
_REQ_DROP = _HOP_BY_HOP | {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-request-id"}
# Request headers looked at while copying; of those, the ones copied as they are.
_REQ_COPIED = frozenset({b"host", b"content-length", b"accept"})
_REQ_SPECIAL = _REQ_DROP | _REQ_COPIED
# A client's X-Request-Id is kept when it is 1-200 printable ASCII characters.
_REQUEST_ID_OK = re.compile(rb"[\x21-\x7e][\x20-\x7e]{0,199}").fullmatch
# Response headers dropped without a look (the framing ones are handled one by one).
_RESP_DROPPED = tuple(
    b"\r\n" + name + b":" for name in (b"keep-alive", b"proxy-connection", b"te", b"trailer", b"x-request-id")
)
_CONN_PLAIN = frozenset({b"close", b"keep-alive", b"upgrade", b"content-length", b""})
_UNROUTED = "(unrouted)"  # metrics key of requests that matched no app
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})

_MAX_HEAD_BYTES = 64 * 1024  # request line/status + headers
_MAX_HEADERS = 128
_BODY_BUFFER = 256 * 1024  # request body buffered while connecting before reading pauses
_PIPELINE_MAX = 8  # complete requests queued on one client connection before reading pauses
_POOL_MAX = 1024  # idle upstream connections kept per target
# Request timing for metrics: uvloop's loop.time() is cached per iteration at millisecond resolution.
_now = time.monotonic
_LOG_FLUSH_EVERY = 0.5  # seconds between access-log flushes
_EJECT_SECONDS = 5.0  # a target that refused a connection gets no new requests for this long
_POOL_IDLE = 3.0  # seconds an idle upstream connection is kept (below common app keep-alive timeouts)

# client read-pause reasons (bit set)
_P_QUEUE = 1  # too many pipelined requests are waiting for their responses
_P_UPSTREAM = 2  # upstream write buffer full
_P_BUFFER = 4  # too much body buffered while connecting
_P_BROKEN = 8  # unparseable input: read nothing more
_P_EOF = 16  # client half-closed; transport stopped reading

# response body framing towards the client
_M_NONE = 0
_M_LENGTH = 1
_M_CHUNKED = 2
_M_CLOSE = 3

_PHRASES = {s.value: s.phrase.encode() for s in HTTPStatus}


class _HeadTooLarge(Exception):
    pass


class _BodyTooLarge(Exception):
    pass


class _BadResponse(Exception):
    pass


def _render_error(
    status: int, code: str, message: str, as_json: bool, links: list[tuple[str, str]] | None
) -> tuple[bytes, bytes]:
    if as_json:
        doc = {"error": {"code": code, "message": message}}
        return json.dumps(doc).encode(), b"application/json"
    title = html.escape(f"{status} {HTTPStatus(status).phrase}")
    parts = [
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>',
        title,
        "</title></head>\n<body><h1>",
        title,
        "</h1>\n<p>",
        html.escape(message),
        "</p>\n",
    ]
    if links is not None:
        if links:
            parts.append("<p>Apps on this server:</p>\n<ul>\n")
            for name, url in links:
                parts.append(f'<li><a href="{html.escape(url)}">{html.escape(name)}</a></li>\n')
            parts.append("</ul>\n")
        else:
            parts.append("<p>No apps on this server yet.</p>\n")
    parts.append("<hr><p><small>lbsolo</small></p></body></html>\n")
    return "".join(parts).encode(), b"text/html; charset=utf-8"


def _port_suffix(raw_host: bytes) -> str:
    """':<port>' from a Host header value, '' when absent or 80."""
    host = raw_host.decode("latin-1").strip()
    tail = host.rpartition("]")[2] if host.startswith("[") else host
    _, sep, port = tail.rpartition(":")
    if sep and port.isdigit() and port != "80":
        return ":" + port
    return ""


class _Request:
    """One request on a client connection. Class attributes are the defaults: creating one is cheap."""

    method = b"GET"
    url = b""
    http11 = True
    headers_done = False
    host = b""
    keep_alive = False
    chunked = False
    has_length = False
    content_length = 0
    received = 0  # body bytes so far
    limit: int | None = None  # the route's maximum body size, once routed
    upgrade = False
    upgrade_value = b""
    accept_json = False
    head = b""  # request line and end-to-end headers as sent to the app
    xff = b""  # X-Forwarded-For from the client
    request_id = b""
    body_size = 0
    body_done = False
    error: tuple[int, str, str] | None = None  # answer this instead of proxying
    sink: _Upstream | None = None  # upstream currently streaming the body
    responded = False  # response head written to the client
    finished = False
    close_after = False
    replayable = False
    attempts = 0
    route: Route | None = None
    status = 0  # of the response, for metrics and the access log
    started = 0.0  # monotonic time of the first byte
    upstream_time: float | None = None  # seconds from sending to the app until its response head

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []  # buffered until an upstream takes it


# ---------------------------------------------------------------------------------------------
# client side


class _Client(asyncio.Protocol):
    __slots__ = (
        "_active",
        "_body_too_large",
        "_bytes_in",
        "_bytes_out",
        "_closed",
        "_connect_task",
        "_cork",
        "_eof",
        "_head_bytes",
        "_in_mark",
        "_leftover",
        "_loop",
        "_lost",
        "_out_mark",
        "_parser",
        "_parsing",
        "_paused",
        "_peer",
        "_pumping",
        "_queue",
        "_served",
        "_server",
        "_target",
        "_too_large",
        "_tunnel",
        "_up",
        "_upgrade_wait",
        "_write_paused",
        "deadline",
        "transport",
        "write_deadline",
    )

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._loop = server._loop
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._peer = b""
        self._queue: deque[_Request] = deque()
        self._parsing: _Request | None = None
        self._head_bytes = 0
        self._too_large = False
        self._body_too_large = False
        self.deadline: float | None = None  # waiting for the client to send
        self.write_deadline: float | None = None  # waiting for the client to read
        self._paused = 0
        self._write_paused = False
        self._up: _Upstream | None = None
        self._active: _Request | None = None
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
        self._target: Target | None = None  # where the current exchange (or tunnel) goes, for drain
        self._bytes_in = self._bytes_out = 0  # on this connection; the marks are where the last request ended
        self._in_mark = self._out_mark = 0

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        server = self._server
        server._clients.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._peer = str(peer[0]).encode()
        if server._stopping:
            self._close()
            return
        self.deadline = self._loop.time() + server.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._lost = True
        self.deadline = None
        self._server._clients.discard(self)
        self._detach_upstream()

    def data_received(self, data: bytes) -> None:
        self._bytes_in += len(data)
        if self._tunnel:
            up = self._up
            if up is not None:
                up._write(data)
            return
        if self._closed or self._paused & _P_BROKEN:
            return
        if self._upgrade_wait:
            self._leftover += data
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
        self._parsing = req = _Request()
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
        parts = [method, b" ", req.url, b" HTTP/1.1\r\n"]
        extend = parts.extend
        for name, value in req.headers:
            lname = name.lower()
            if lname not in _REQ_SPECIAL:
                extend((name, b": ", value, b"\r\n"))
                continue
            if lname == b"host":
                hosts += 1
                req.host = value
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
                extend((name, b": ", value, b"\r\n"))
            elif lname == b"x-request-id":
                if _REQUEST_ID_OK(value):
                    req.request_id = value
            elif lname == b"accept":
                low = value.lower()
                req.accept_json = b"application/json" in low and b"text/html" not in low
                extend((name, b": ", value, b"\r\n"))
            elif lname == b"upgrade":
                req.upgrade_value = value
            elif lname == b"x-forwarded-for":
                req.xff = value if not req.xff else req.xff + b", " + value
        if tokens:
            tokens -= _CONN_PLAIN
            tokens.discard(b"host")
            if tokens:  # the client named more hop-by-hop headers: copy again without them
                del parts[4:]
                for name, value in req.headers:
                    lname = name.lower()
                    if lname not in tokens and (lname not in _REQ_SPECIAL or lname in _REQ_COPIED):
                        extend((name, b": ", value, b"\r\n"))
        req.head = b"".join(parts)
        if not req.request_id:
            req.request_id = self._server._new_request_id()
        if method == b"CONNECT":
            req.error = (405, "method_not_allowed", "CONNECT is not supported by this proxy")
        elif hosts > 1 or (hosts == 0 and req.http11):
            req.error = (400, "bad_request", "missing or duplicate Host header")
        elif req.chunked and req.has_length:
            # Request smuggling: front and back ends could disagree on where this body ends.
            req.error = (400, "bad_request", "both Content-Length and Transfer-Encoding")
        if upgrade:
            req.chunked = False
        self._queue.append(req)
        if not self._paused:
            self.deadline = self._loop.time() + self._server.read_timeout

    def on_body(self, data: bytes) -> None:
        req = self._parsing
        assert req is not None
        req.received += len(data)
        limit = req.limit
        if limit is not None and req.received > limit:
            self._body_too_large = True
            raise _BodyTooLarge
        sink = req.sink
        if sink is not None:
            sink._send_body(data)
        elif not req.finished:
            req.body.append(data)
            req.body_size += len(data)
            if req.body_size > _BODY_BUFFER:
                self._pause(_P_BUFFER)
        if not self._paused:
            self.deadline = self._loop.time() + self._server.read_timeout

    def on_message_complete(self) -> None:
        req = self._parsing
        assert req is not None
        self._parsing = None
        req.body_done = True
        sink = req.sink
        if sink is not None:
            sink._end_body()
        if not req.finished:
            # Waiting for the app: the upstream's deadline applies, not the client's. Reading goes on
            # (pipelined requests queue up) so that a plain keep-alive exchange never pauses the socket.
            self.deadline = None
            if len(self._queue) >= _PIPELINE_MAX:
                self._pause(_P_QUEUE)

    # -- parsing -------------------------------------------------------------------------

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

    def _on_parse_error(self, exc: Exception) -> None:
        self._pause(_P_BROKEN)
        queue = self._queue
        if queue and not queue[-1].keep_alive and self._parsing is None:
            return  # bytes after a `Connection: close` request: ignored
        if self._too_large:
            status, message = 431, "request head too large"
        elif self._body_too_large:
            status, message = 413, "request body too large"
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
                    self._send_error(cur, status, "bad_request", message, close=True)
            else:
                cur.error = (status, "bad_request", message)
            return
        bad = _Request()
        bad.error = (status, "bad_request", message)
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

    def _dispatch(self, req: _Request) -> None:
        if req.error is not None:
            self._send_error(req, *req.error, close=True)
            return
        server = self._server
        table = server.table
        route = table.match_raw(req.host, req.url)
        if route is None:
            suffix = _port_suffix(req.host)
            links = [(app, f"http://{app}.{table.domain}{suffix}") for app in table.apps()]
            host = normalize_host(req.host) or "(none)"
            self._send_error(req, 404, "not_found", f"no app is served at {host}", links=links)
            return
        targets = route.targets
        if not targets:
            self._send_error(req, 503, "app_not_running", f"app {route.app} is not running")
            return
        req.route = route
        limit = route.max_body
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
        target = server._pick(targets)
        self._track(target)
        up = server._pool_get(target)
        if up is not None:
            self._begin(req, up, reused=True)
        else:
            self._connect_task = self._loop.create_task(self._connect(req, target))

    async def _connect(self, req: _Request, first: Target) -> None:
        """Open a connection to `first`, else to the route's other targets (nothing was sent yet)."""
        server = self._server
        route = req.route
        assert route is not None
        reason = "refused"
        tried: list[Target] = []
        target: Target | None = first
        while target is not None:
            tried.append(target)
            self._track(target)
            try:
                async with asyncio.timeout(server.connect_timeout):
                    _, up = await self._loop.create_connection(
                        lambda t=target: _Upstream(server, t), target.host, target.port
                    )
            except TimeoutError:
                reason = "timed out"
                server._eject(target)
                log.warning("proxy: connecting to %s:%s for app %s timed out", target.host, target.port, route.app)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                server._eject(target)
                log.warning("proxy: cannot connect to %s:%s for app %s: %s", target.host, target.port, route.app, exc)
            else:
                self._connect_task = None
                if self._closed or self._active is not req:
                    up._close()
                    return
                self._begin(req, up, reused=False)
                return
            target = server._pick_other(route, tried)
        self._connect_task = None
        if not self._closed and self._active is req:
            self._send_error(req, 502, "bad_gateway", f"app {route.app} is unreachable (connection {reason})")

    def _begin(self, req: _Request, up: _Upstream, reused: bool) -> None:
        self._up = up
        up._begin(self, req, reused)
        if self._write_paused:
            up._pause_read()
        self._resume(_P_BUFFER)

    def _retry(self, req: _Request) -> None:
        """Send an idempotent request again on a fresh connection, to the least busy target."""
        route = self._server.table.routes.get(req.route.app) if req.route is not None else None
        if route is None or not route.targets:
            self._send_error(req, 502, "bad_gateway", "app closed the connection")
            return
        req.attempts += 1
        req.route = route
        target = self._server._pick(route.targets)
        self._track(target)
        self._connect_task = self._loop.create_task(self._connect(req, target))

    # -- in-flight accounting (drain) -----------------------------------------------------

    def _track(self, target: Target) -> None:
        """Count this connection's current exchange (or tunnel) against `target`."""
        old = self._target
        if old is target:
            return
        if old is not None:
            self._untrack()
        self._target = target
        inflight = self._server._inflight
        inflight[target] = inflight.get(target, 0) + 1

    def _untrack(self) -> None:
        target = self._target
        if target is None:
            return
        self._target = None
        server = self._server
        inflight = server._inflight
        left = inflight.get(target, 1) - 1
        if left > 0:
            inflight[target] = left
        else:
            inflight.pop(target, None)
            if server._drain_waiters:
                server._drained.set()

    # -- responses -----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        cork = self._cork
        if cork is not None:
            cork.append(data)
        elif not self._closed:
            self._bytes_out += len(data)
            self.transport.write(data)  # type: ignore[union-attr]

    def _keep_alive(self, req: _Request) -> bool:
        return req.keep_alive and req.body_done and not self._eof and not self._server._stopping

    def _send_error(
        self,
        req: _Request,
        status: int,
        code: str,
        message: str,
        *,
        close: bool = False,
        links: list[tuple[str, str]] | None = None,
    ) -> None:
        keep = not close and self._keep_alive(req)
        body, ctype = _render_error(status, code, message, req.accept_json, links)
        if not req.request_id:
            req.request_id = self._server._new_request_id()
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

    def _finish(self, req: _Request, close: bool) -> None:
        """The response to `req` (the head of the queue) is complete."""
        req.finished = True
        req.sink = None
        req.body = []
        queue = self._queue
        if queue and queue[0] is req:
            queue.popleft()
        self._active = None
        self._up = None
        self._served += 1
        if self._target is not None:
            self._untrack()
        self._record(req)
        if close or self._closed or self._eof:
            self._close()
            return
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
        self._pump()

    def _record(self, req: _Request) -> None:
        """Count a finished exchange in its app's metrics and buffer its access-log entry."""
        server = self._server
        now = _now()
        route = req.route
        app = route.app if route is not None else _UNROUTED
        stats = server._stats.get(app)
        if stats is None:
            stats = server._stats[app] = AppStats()
        bytes_in = self._bytes_in - self._in_mark
        self._in_mark = self._bytes_in
        bytes_out = self._bytes_out - self._out_mark
        self._out_mark = self._bytes_out
        duration = now - req.started
        stats.observe(req.status, bytes_in, bytes_out, duration)
        buffer = server._log_buffer
        if buffer is not None:
            buffer.append(
                (
                    now,
                    app,
                    route.release if route is not None else None,
                    req.method,
                    req.url,
                    req.status,
                    bytes_in,
                    bytes_out,
                    duration,
                    req.upstream_time,
                    req.request_id,
                    self._peer,
                )
            )

    def _upstream_failed(self, req: _Request, status: int, code: str, message: str, retry: bool) -> None:
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
        self.deadline = None
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
        self._paused |= reason

    def _resume(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if self._paused or self._closed:
            return
        self.transport.resume_reading()  # type: ignore[union-attr]
        if self._tunnel:
            self.deadline = None
            return
        server = self._server
        req = self._parsing
        now = self._loop.time()
        if req is not None:
            self.deadline = now + (server.read_timeout if req.headers_done else server.header_timeout)
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
        self._untrack()
        task = self._connect_task
        if task is not None:
            self._connect_task = None
            task.cancel()
        up = self._up
        if up is not None:
            self._up = None
            if self._tunnel:
                up._close()
            else:
                up._abandon()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.deadline = None
        self._detach_upstream()
        self.transport.close()  # type: ignore[union-attr]

    def _abort(self) -> None:
        self._closed = True
        self.deadline = None
        self._detach_upstream()
        if self.transport is not None and not self._lost:
            self.transport.abort()


# ---------------------------------------------------------------------------------------------
# upstream side


def _cut(block: bytes, low: bytes, pattern: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """Remove every `pattern` ("\\r\\nname:") header line from a head block; also return their values."""
    values = []
    start = len(pattern)
    while (pos := low.find(pattern)) >= 0:
        end = low.find(b"\r\n", pos + 2)
        if end < 0:
            end = len(low)
        values.append(block[pos + start : end].strip())
        block = block[:pos] + block[end:]
        low = low[:pos] + low[end:]
    return block, low, values


class _Upstream(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_done",
        "_eof_body",
        "_got",
        "_head_buf",
        "_head_bytes",
        "_interim",
        "_keep",
        "_length",
        "_loop",
        "_lost",
        "_mode",
        "_parser",
        "_read_paused",
        "_req_chunked",
        "_req_sent",
        "_reused",
        "_sent_at",
        "_server",
        "_stale",
        "_status",
        "_te",
        "_tunnel",
        "_upgrade",
        "_write_paused",
        "client",
        "deadline",
        "idle_since",
        "pooled",
        "req",
        "target",
        "transport",
        "write_deadline",
    )

    def __init__(self, server: ProxyServer, target: Target) -> None:
        self._server = server
        self._loop = server._loop
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.client: _Client | None = None
        self.req: _Request | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._closed = False
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._tunnel = False
        self._stale = True  # the response parser must be replaced before the next exchange
        self._sent_at = 0.0
        self.pooled = False
        self.idle_since = 0.0
        self.deadline: float | None = None  # waiting for the app to answer
        self.write_deadline: float | None = None  # waiting for the app to read the request
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._head_buf = b""  # the response head as received (the start of a response)
        self._length: bytes | None = None  # Content-Length value
        self._te: bytes | None = None  # Transfer-Encoding value
        self._upgrade: bytes | None = None
        self._head_bytes = 0
        self._mode = _M_NONE
        self._eof_body = False
        self._done = False
        self._got = False
        self._keep = False
        self._interim = False
        self._req_sent = False
        self._req_chunked = False
        self._reused = False

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._server._upstreams.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = self._lost = True
        self.deadline = None
        server = self._server
        server._upstreams.discard(self)
        if self.pooled:
            server._pool_remove(self)
            return
        client = self.client
        if client is None:
            return
        if self._tunnel:
            self.client = None
            client._close()
        elif exc is None and self._eof_body and self.req is not None and self.req.responded and not self._done:
            self._done = True
            if self._mode == _M_CHUNKED:
                client._write(b"0\r\n\r\n")
            self._complete()
        else:
            self._fail(502, "bad_gateway", "app closed the connection", retry=not self._got)

    def eof_received(self) -> bool | None:
        return False

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            if not self._closed:
                log.debug("proxy: unexpected data from idle upstream %s", self.target)
                self._close()
            return
        if self._tunnel:
            client._write(data)
            return
        self._got = True
        if self.deadline is not None:
            self.deadline = self._loop.time() + self._server.read_timeout
        if not self._status:  # still in the response head
            self._head_bytes += len(data)
            self._head_buf += data
        # Everything this chunk produces for the client goes out in one write.
        client._cork = cork = []
        upgrade_at = -1
        error: Exception | None = None
        try:
            self._parser.feed_data(data)  # type: ignore[union-attr]
        except httptools.HttpParserUpgrade as exc:
            upgrade_at = exc.args[0] if exc.args else len(data)
        except httptools.HttpParserError as exc:
            error = exc
        except Exception as exc:
            log.exception("proxy: internal error while relaying a response")
            error = exc
        finally:
            client._cork = None
            if cork:
                client._write(cork[0] if len(cork) == 1 else b"".join(cork))
        if self.client is None:
            return
        if not self._status and self._head_bytes > _MAX_HEAD_BYTES and error is None:
            self._fail(502, "bad_gateway", "app sent a response head that is too large", retry=False)
            return
        if upgrade_at >= 0:
            if self._status == 101:
                self._start_tunnel(data[upgrade_at:])
            else:
                self._fail(502, "bad_gateway", "app sent an unexpected upgrade", retry=False)
            return
        if error is not None:
            if not self._done:
                log.warning("proxy: invalid response from %s: %s", self.target, error)
                self._fail(502, "bad_gateway", "app sent an invalid response", retry=False)
                return
            self._keep = False
        if self._done:
            self._complete()

    def pause_writing(self) -> None:
        self._write_paused = True
        client = self.client
        if client is not None:
            self.write_deadline = self._loop.time() + self._server.read_timeout
            client._pause(_P_UPSTREAM)

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_deadline = None
        client = self.client
        if client is not None:
            client._resume(_P_UPSTREAM)

    # -- httptools callbacks -------------------------------------------------------------

    # No on_status/on_header: httptools then makes no Python call per header. The response head is
    # read from the raw bytes in _classify, with C-level bytes operations.

    def on_headers_complete(self) -> None:
        client = self.client
        req = self.req
        if client is None or req is None:
            return
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        self._status = status
        parts = self._classify(status)
        if status < 200 and status != 101:
            self._interim = True
            if req.http11:
                client._write(self._head(status, parts, keep=True, mode=_M_NONE, interim=True))
            return
        if status == 101 and not req.upgrade:
            raise _BadResponse("101 without an upgrade request")
        req.status = status
        req.upstream_time = _now() - self._sent_at
        te = self._te
        chunked = te is not None and te.rpartition(b",")[2].strip().lower() == b"chunked"
        no_body = req.method == b"HEAD" or status in (204, 304) or status == 101
        if no_body:
            # The parser does not know the request method: a fresh one parses the next response.
            self._stale = True
            mode = _M_NONE
        elif self._length is not None and te is None:
            mode = _M_LENGTH
        else:
            self._eof_body = not chunked
            mode = _M_CHUNKED if req.http11 else _M_CLOSE
        self._mode = mode
        self._keep = parser.should_keep_alive()
        keep = mode != _M_CLOSE and client._keep_alive(req)
        req.close_after = not keep
        client._write(self._head(status, parts, keep=keep, mode=mode, interim=False))
        req.responded = True
        if no_body and status != 101:
            self._done = True

    def on_body(self, data: bytes) -> None:
        if self._done:
            return
        client = self.client
        if client is None:
            return
        if self._mode == _M_CHUNKED:
            client._write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            client._write(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._head_bytes = len(self._head_buf)
            self._status = 0
            return
        if not self._done:
            self._keep = self._keep and self._parser.should_keep_alive()  # type: ignore[union-attr]
            self._done = True
            if self._mode == _M_CHUNKED and self.client is not None:
                self.client._write(b"0\r\n\r\n")

    # -- exchange ------------------------------------------------------------------------

    def _classify(self, status: int) -> list[bytes]:
        """Read the response head just parsed: note the framing headers, keep the end-to-end ones.

        Returns the status line and the kept headers, CRLF-terminated, as the first part of the head.
        """
        buf = self._head_buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            raise _BadResponse("response head without CRLF line ends")
        # After a 1xx the rest is the start of the next response; otherwise it is body: not kept.
        self._head_buf = buf[end + 4 :] if status < 200 and status != 101 else b""
        eol = buf.find(b"\r\n", 0, end + 2)
        line = buf[8:eol]  # after "HTTP/1.x": " 200 OK"
        if line.count(b" ") < 2:
            line = b" %d %s" % (status, _PHRASES.get(status, b""))
        block = buf[eol:end]  # "\r\nName: value" per header
        if block.count(b"\r\n") > _MAX_HEADERS:
            raise _BadResponse("too many response headers")
        low = block.lower()
        self._length = self._te = self._upgrade = None
        if b"\r\ncontent-length:" in low:
            block, low, values = _cut(block, low, b"\r\ncontent-length:")
            self._length = values[0]
        if b"\r\nconnection:" in low:
            block, low, values = _cut(block, low, b"\r\nconnection:")
            tokens = {t.strip() for v in values for t in v.lower().split(b",")} - _CONN_PLAIN
            for token in tokens:  # more hop-by-hop headers named by the app
                block, low, _ = _cut(block, low, b"\r\n" + token + b":")
        if b"\r\ntransfer-encoding:" in low:
            block, low, values = _cut(block, low, b"\r\ntransfer-encoding:")
            self._te = b", ".join(values)
        if b"\r\nupgrade:" in low:
            block, low, values = _cut(block, low, b"\r\nupgrade:")
            self._upgrade = values[0]
        for pattern in _RESP_DROPPED:
            if pattern in low:
                block, low, _ = _cut(block, low, pattern)
        return [b"HTTP/1.1" + line + block + b"\r\n"]

    def _head(self, status: int, parts: list[bytes], *, keep: bool, mode: int, interim: bool) -> bytes:
        append = parts.append
        extend = parts.extend
        length = self._length
        if length is not None and mode < _M_CHUNKED:  # _M_NONE or _M_LENGTH
            extend((b"Content-Length: ", length, b"\r\n"))
        if interim:
            append(b"\r\n")
            return b"".join(parts)
        if status == 101:
            req = self.req
            assert req is not None
            upgrade = self._upgrade or req.upgrade_value
            append(b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % upgrade)
            return b"".join(parts)
        req = self.req
        if req is not None:
            extend((b"X-Request-Id: ", req.request_id, b"\r\n"))
        if mode == _M_CHUNKED:
            append(b"Transfer-Encoding: chunked\r\n")
        if not keep:
            append(b"Connection: close\r\n")
        elif self.req is not None and not self.req.http11:
            append(b"Connection: keep-alive\r\n")
        append(b"\r\n")
        return b"".join(parts)

    def _begin(self, client: _Client, req: _Request, reused: bool) -> None:
        self._reset()
        self.client = client
        self.req = req
        self._reused = reused
        self._sent_at = _now()
        if self._stale:
            self._stale = False
            self._parser = httptools.HttpResponseParser(self)
        xff = req.xff
        peer = client._peer
        parts = [
            req.head,
            b"X-Forwarded-For: ",
            xff + b", " + peer if xff else peer,
            b"\r\nX-Forwarded-Proto: http\r\nX-Request-Id: ",
            req.request_id,
            b"\r\n",
        ]
        extend = parts.extend
        if req.host:
            extend((b"X-Forwarded-Host: ", req.host, b"\r\n"))
        if req.upgrade:
            extend((b"Connection: Upgrade\r\nUpgrade: ", req.upgrade_value, b"\r\n"))
        chunked = self._req_chunked = req.chunked
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts.append(b"\r\n")
        for chunk in req.body:
            if chunked:
                parts.append(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                parts.append(chunk)
        if req.body_done:
            req.replayable = True  # the whole body is still in req.body
            if chunked:
                parts.append(b"0\r\n\r\n")
            self._req_sent = True
            self.deadline = self._loop.time() + self._server.read_timeout
        else:
            req.replayable = False
            req.body = []
            req.body_size = 0
            req.sink = self
        self._write(b"".join(parts))

    def _send_body(self, data: bytes) -> None:
        if self._req_chunked:
            self._write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._write(data)

    def _end_body(self) -> None:
        if self._req_chunked:
            self._write(b"0\r\n\r\n")
        self._req_sent = True
        if self.deadline is None and not self._read_paused:
            self.deadline = self._loop.time() + self._server.read_timeout

    def _complete(self) -> None:
        client = self.client
        req = self.req
        assert client is not None and req is not None
        self.client = None
        self.req = None
        self.deadline = self.write_deadline = None
        req.sink = None
        reusable = self._keep and self._req_sent and not self._eof_body and not self._write_paused
        if reusable and not self._closed:
            self._server._pool_put(self)
        else:
            self._close()
        client._finish(req, close=req.close_after)

    def _fail(self, status: int, code: str, message: str, retry: bool) -> None:
        client = self.client
        req = self.req
        self.client = None
        self.req = None
        self.deadline = self.write_deadline = None
        self._abort()
        if client is not None and req is not None:
            client._upstream_failed(req, status, code, message, retry and self._reused and not self._got)

    def _on_read_timeout(self) -> None:
        if self._tunnel:
            client = self.client
            self.client = None
            self.write_deadline = None
            self._abort()
            if client is not None:
                client._close()
            return
        req = self.req
        log.warning(
            "proxy: app %s (%s:%s) made no progress for %.1fs",
            req.route.app if req is not None and req.route is not None else "?",
            self.target.host,
            self.target.port,
            self._server.read_timeout,
        )
        self._fail(504, "gateway_timeout", "app did not respond in time", retry=False)

    def _start_tunnel(self, tail: bytes) -> None:
        client = self.client
        assert client is not None
        self._tunnel = True
        self.deadline = self.write_deadline = None
        req = self.req
        self.req = None
        if req is not None:
            req.finished = True
            client._record(req)
        client._start_tunnel(self, tail)

    # -- flow control & lifecycle --------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def _pause_read(self) -> None:
        if not self._read_paused and not self._closed:
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.deadline = None

    def _resume_read(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self._closed:
                return
            self.transport.resume_reading()  # type: ignore[union-attr]
            if self.client is not None and self._req_sent and not self._tunnel:
                self.deadline = self._loop.time() + self._server.read_timeout

    def _abandon(self) -> None:
        """The client went away mid-exchange: drop the connection."""
        self.client = None
        self.req = None
        self.deadline = None
        self._abort()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.deadline = None
            self.transport.close()  # type: ignore[union-attr]

    def _abort(self) -> None:
        self._closed = True
        self.deadline = None
        if not self._lost:
            self.transport.abort()  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# server


class ProxyServer:
    """The proxy listener. `set_routes` swaps the route table atomically, without a restart."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        domain: str = "lbsolo.localhost",
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        header_timeout: float = 10.0,
        idle_timeout: float = 75.0,
        access_log: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self._port = port
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.table: RouteTable = RouteTable(domain)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._upstreams: set[_Upstream] = set()
        self._idle: dict[Target, list[_Upstream]] = {}
        self._rr = 0  # round-robin tie-break between equally busy targets
        self._inflight: dict[Target, int] = {}  # requests (and tunnels) in progress per target
        self._ejected: dict[Target, float] = {}  # target -> loop time until which it gets no new requests
        self._drained = asyncio.Event()
        self._drain_waiters = 0
        self._stats: dict[str, AppStats] = {}
        self._access_log = access_log
        # Access-log entries wait here as tuples; a timer formats and hands them over off the hot path.
        self._log_buffer: list[tuple[Any, ...]] | None = [] if access_log is not None else None
        self._flusher: asyncio.TimerHandle | None = None
        self._id_prefix = os.urandom(6).hex().encode()
        self._id_count = 0
        self._stopping = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = max(0.05, min(1.0, min(read_timeout, header_timeout, idle_timeout) / 4))

    @property
    def domain(self) -> str:
        return self.table.domain

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        """Replace the routing table (atomic swap; in-flight requests keep their target)."""
        self.table = table = RouteTable(self.table.domain, routes)
        live = table.targets()
        for target in [t for t in self._ejected if t not in live]:
            del self._ejected[target]
        for target in [t for t in self._idle if t not in live]:
            for up in self._idle.pop(target):
                up.pooled = False
                up._close()

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Per-app counters since start (JSON-able): requests by status class, bytes, latency histogram."""
        return {app: self._stats[app].to_dict() for app in sorted(self._stats)}

    def prometheus(self) -> str:
        """The same counters in Prometheus text exposition format."""
        return prometheus_text(self._stats)

    def in_flight(self, target: Target) -> int:
        """Requests (and WebSocket tunnels) to `target` in progress now, whichever route sent them."""
        return self._inflight.get(target, 0)

    async def wait_drained(self, targets: Iterable[Target], timeout: float) -> bool:
        """Wait until nothing is in flight to `targets`; False if some still are after `timeout` seconds.

        Call it after `set_routes` has removed the targets: they get no new requests from then on.
        """
        targets = tuple(targets)
        inflight = self._inflight
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        self._drain_waiters += 1
        try:
            while any(t in inflight for t in targets):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                self._drained.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await self._drained.wait()
            return True
        finally:
            self._drain_waiters -= 1

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._loop = loop = asyncio.get_running_loop()
        self._stopping = False
        # A deep accept queue: a burst of new connections must not overflow it (SYN retries cost seconds).
        self._server = await loop.create_server(
            lambda: _Client(self), self.host, self._port, reuse_address=True, backlog=4096
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)
        if self._access_log is not None:
            self._flusher = loop.call_later(_LOG_FLUSH_EVERY, self._flush_access_log)
        log.info("proxy listening on http://%s:%d for *.%s", self.host, self._port, self.table.domain)

    @property
    def port(self) -> int:
        return self._port

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish for up to `timeout`, then close everything."""
        server = self._server
        if server is None:
            return
        loop = self._loop
        assert loop is not None
        self._stopping = True
        server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._close_idle_pool()
        for client in list(self._clients):
            client._shutdown_if_idle()
        deadline = loop.time() + max(0.0, timeout)
        while self._clients and loop.time() < deadline:
            await asyncio.sleep(0.01)
            self._close_idle_pool()
        for client in list(self._clients):
            client._abort()
        self._close_idle_pool()
        for up in list(self._upstreams):
            up._abort()
        # Let the transports deliver connection_lost so nothing is left half-closed.
        for _ in range(200):
            if not self._clients and not self._upstreams:
                break
            await asyncio.sleep(0.005)
        try:
            await asyncio.wait_for(server.wait_closed(), 1.0)
        except TimeoutError:
            log.warning("proxy: listener did not close in time")
        self._server = None
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        self._flush_access_log()
        log.info("proxy stopped")

    # -- internals -----------------------------------------------------------------------

    def _new_request_id(self) -> bytes:
        """Unique per process and cheap: a random prefix chosen at start and a counter."""
        self._id_count = count = self._id_count + 1
        return b"%s%08x" % (self._id_prefix, count)

    def _flush_access_log(self) -> None:
        buffer = self._log_buffer
        sink = self._access_log
        if buffer and sink is not None:
            self._log_buffer = []
            # Entries carry monotonic time; convert to wall time once per flush.
            offset = time.time() - _now()
            try:
                for entry in buffer:
                    sink(access_line((entry[0] + offset, *entry[1:])))
            except Exception:
                log.exception("proxy: access log writer failed; %d lines dropped", len(buffer))
        if self._server is not None and not self._stopping and self._loop is not None:
            self._flusher = self._loop.call_later(_LOG_FLUSH_EVERY, self._flush_access_log)

    def _pick(self, targets: tuple[Target, ...]) -> Target:
        """The target with the fewest requests in flight, skipping ejected ones; round-robin on ties."""
        if len(targets) == 1:
            return targets[0]
        inflight = self._inflight
        ejected = self._ejected
        count = len(targets)
        rr = self._rr
        self._rr = rr + 1
        best: Target | None = None
        best_load = 1 << 62
        for i in range(count):
            target = targets[(rr + i) % count]
            if ejected and target in ejected and self._is_ejected(target):
                continue
            load = inflight.get(target, 0)
            if load < best_load:
                best = target
                best_load = load
        return best if best is not None else targets[rr % count]

    def _pick_other(self, route: Route, tried: list[Target]) -> Target | None:
        """Another target of the app's current route after a failed connect; None when none is left."""
        current = self.table.routes.get(route.app)
        candidates = [t for t in (current.targets if current else ()) if t not in tried]
        healthy = [t for t in candidates if not self._is_ejected(t)]
        if healthy or candidates:
            return self._pick(tuple(healthy or candidates))
        return None

    def _eject(self, target: Target) -> None:
        """Passive health check: a target that refused a connection is skipped for a while."""
        self._ejected[target] = self._loop.time() + _EJECT_SECONDS  # type: ignore[union-attr]

    def _is_ejected(self, target: Target) -> bool:
        until = self._ejected.get(target)
        if until is None:
            return False
        if until > self._loop.time():  # type: ignore[union-attr]
            return True
        del self._ejected[target]
        return False

    def _pool_get(self, target: Target) -> _Upstream | None:
        idle = self._idle.get(target)
        while idle:
            up = idle.pop()
            up.pooled = False
            if not up._closed and not up.transport.is_closing():  # type: ignore[union-attr]
                return up
            up._close()
        return None

    def _pool_put(self, up: _Upstream) -> None:
        up._resume_read()
        if self._stopping or up.target not in self.table._targets:
            up._close()
            return
        idle = self._idle.setdefault(up.target, [])
        if len(idle) >= _POOL_MAX:
            up._close()
            return
        up.pooled = True
        up.idle_since = self._loop.time()  # type: ignore[union-attr]
        idle.append(up)

    def _pool_remove(self, up: _Upstream) -> None:
        up.pooled = False
        idle = self._idle.get(up.target)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(up)

    def _close_idle_pool(self) -> None:
        idle, self._idle = self._idle, {}
        for ups in idle.values():
            for up in ups:
                up.pooled = False
                up._close()

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        try:
            for client in list(self._clients):
                deadline = client.deadline
                if deadline is None or deadline > now:
                    deadline = client.write_deadline
                if deadline is not None and deadline <= now:
                    client._on_timeout()
                    continue
                up = client._up
                if up is not None:
                    deadline = up.deadline
                    if deadline is None or deadline > now:
                        deadline = up.write_deadline
                    if deadline is not None and deadline <= now:
                        up._on_read_timeout()
            for ups in self._idle.values():
                for up in [u for u in ups if now - u.idle_since >= _POOL_IDLE]:
                    ups.remove(up)
                    up.pooled = False
                    up._close()
        except Exception:
            log.exception("proxy: error in the timeout sweep")
        if not self._stopping:
            self._sweeper = loop.call_later(self._sweep_every, self._sweep)
