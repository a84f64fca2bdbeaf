"""The client side of lbsolo's proxy: one `Downstream` protocol per accepted connection.

A client's bytes are read two ways: the common request (a whole GET or HEAD with plain end-to-end
headers) by the fast path of `proxy_request`, from its raw bytes; anything else by httptools,
calling back a `RequestReader` (proxy_reader). The connection answers the requests it read one at
a time, in order: a request that could not be read gets its error page here; every other one goes
to the connection's `Forwarder` (proxy_forward), which routes it, answers what the proxy answers
for a route, or starts it on an `Upstream` (proxy_upstream). The connection writes what the
upstream relays (it is the upstream's `ClientSide`), ends each exchange (`finish`, `record`),
keeps connections alive, pipelines, turns into a tunnel after an upgrade, applies backpressure
both ways, and the timeouts and caps.

What it must not do: log per request or format anything for the access log on the hot path
(`record` appends a tuple, the server folds them), let one connection break another, route, or
keep any per-target state (the forwarder and the pool do). It sees the server only as an `Edge`,
and calls the forwarder and the upstream side only through their public methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol, cast

import httptools

from lbsolo.proxy_forward import Forwarder, Routing
from lbsolo.proxy_http import (
    _P_BROKEN,
    _P_EOF,
    _P_QUEUE,
    _P_UPSTREAM,
    REFUSED_CONNECTION,
    _now,
    error_response,
)
from lbsolo.proxy_reader import PIPELINE_MAX, ReaderSettings, RequestReader
from lbsolo.proxy_request import KNOWN_REQUESTS, Request, read_simple_request
from lbsolo.proxy_routes import Route
from lbsolo.proxy_upstream import Upstream

log = logging.getLogger("lbsolo.proxy")

_UNROUTED = "(unrouted)"  # metrics key of requests that matched no app
_NO_ROUTE = Route(_UNROUTED)
# Bound once: a method call on an imported name compiles to a slower attribute load plus a call.
_known_request = KNOWN_REQUESTS.get


class Edge(Routing, ReaderSettings, Protocol):
    """What a client connection reads and counts of the proxy (`ProxyServer` is one); its
    forwarder and its reader read their parts of it."""

    loop: asyncio.AbstractEventLoop | None
    stopping: bool
    idle_timeout: float
    tunnel_idle_timeout: float

    @property
    def finished(self) -> list[tuple[object, ...]]:
        """Finished exchanges, as `Downstream.record` notes them, for the server to fold."""
        ...

    def admit(self, conn: Downstream, peer: bytes, trusted: bool) -> bool:
        """Count a new connection from `peer`; False (and counted as refused) past a cap."""
        ...

    def leave(self, conn: Downstream, peer: bytes) -> None: ...

    def trusts(self, peer: str) -> bool: ...


class Downstream(asyncio.Protocol):
    __slots__ = (
        "_bytes_in", "_bytes_out", "_counted", "_eof", "_finished", "_forwarder", "_ids", "_in_mark", "_leftover",
        "_loop", "_lost", "_out_mark", "_paused_at", "_pumping", "_reader", "_served", "_server", "_tunnel",
        "_upgrade_wait", "active", "closed", "cork", "deadline", "paused", "peer", "proto", "queue", "transport",
        "trusted", "write_deadline", "write_paused",
    )  # fmt: skip

    def __init__(self, server: Edge, https: bool = False) -> None:
        self._server = server
        self.proto = b"https" if https else b"http"
        loop = server.loop
        assert loop is not None
        self._loop = loop
        self._ids = server.request_ids
        self._finished = server.finished
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.trusted = False  # the peer is a trusted proxy: its forwarding headers are believed
        self.queue: deque[Request] = deque()  # read, not yet answered, in order
        self.deadline: float | None = None  # waiting for the client to send
        self.write_deadline: float | None = None  # waiting for the client to read
        self.paused = 0
        self._paused_at = 0.0  # loop time reading paused (the body rate does not count it)
        self._counted = False  # counted in the server's connections per client address
        self.write_paused = False  # the client does not read what is written
        self.active: Request | None = None
        self._pumping = False
        self.closed = False
        self._lost = False
        self._eof = False
        self.cork: list[bytes] | None = None  # while set, what is written is gathered for one write
        self._leftover = b""
        self._upgrade_wait = False
        self._tunnel = False
        self._served = 0
        self._bytes_in = self._bytes_out = 0  # on this connection; the marks are where the last request ended
        self._in_mark = self._out_mark = 0
        self._reader = RequestReader(self, server, loop, httptools.HttpRequestParser)
        self._forwarder = Forwarder(self, server, loop)

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        server = self._server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0]).encode()
            self.trusted = server.trusts(str(peer[0]))
        # Caps: one address (a trusted proxy speaks for many clients: not capped) and everyone.
        if not server.admit(self, self.peer, self.trusted):
            self.closed = True
            self.transport.write(REFUSED_CONNECTION)
            self.transport.close()
            return
        self._counted = True
        if server.stopping:
            self.close()
            return
        self.deadline = self._loop.time() + server.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._drop()
        if self._counted:
            self._counted = False
            self._server.leave(self, self.peer)

    def data_received(self, data: bytes) -> None:
        self._bytes_in += len(data)
        if self._tunnel:
            up = self._forwarder.up
            if up is not None:
                up.write(data)
                self.deadline = self._loop.time() + self._server.tunnel_idle_timeout
            return
        if self.closed or self.paused & _P_BROKEN:
            return
        if self._upgrade_wait:
            self._leftover += data
            return
        if not self.queue and not self.paused and self._reader.parsing is None and data.endswith(b"\r\n\r\n"):
            # The fast path: a whole simple request, nothing else queued or in progress: it goes out at once.
            known = _known_request(data)
            if known is None:
                known = read_simple_request(data)
            if known is not None:
                req = Request()
                req.started = _now()
                req.method, req.url, req.host, req.head, http11, req.accept_json = known
                req.http11 = req.keep_alive = http11  # HTTP/1.0 keeps alive only when asked (not simple)
                req.headers_done = req.body_done = True
                req.request_id = next(self._ids)
                self.deadline = None  # waiting for the app now: the upstream's deadline applies
                self.queue.append(req)
                self.active = req
                self._forwarder.dispatch(req)
                return
        self._feed(data)

    def eof_received(self) -> bool | None:
        if self._tunnel or self._reader.parsing is not None or not self.queue:
            self.close()
            return False
        # Half-closed after a complete request: answer it, then close.
        self._eof = True
        self.paused |= _P_EOF
        self.deadline = None
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_deadline = self._loop.time() + self._server.read_timeout
        up = self._forwarder.up
        if up is not None:
            up.pause_read()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_deadline = None
        up = self._forwarder.up
        if up is not None:
            up.resume_read()

    # -- reading -------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrade_wait = True
            self._leftover = data[exc.args[0] :] if exc.args else b""
            self.pause(_P_QUEUE)  # until the app accepts or declines the upgrade
        except httptools.HttpParserError as exc:
            self._on_parse_error(exc)
        except Exception:
            log.exception("proxy: internal error while parsing a request")
            self.abort()
            return
        self._pump()
        req = reader.parsing
        if req is not None and req.headers_done and not self.paused:
            # A body is still coming: one deadline per read, not per callback (most bodies come whole).
            if req.received:
                self.deadline = reader.body_deadline(req, self._loop.time())
            else:  # none of it yet: the same deadline, counted from when the head was read
                server = self._server
                wait = server.read_timeout
                if server.body_min_rate > 0 and server.body_grace < wait:
                    wait = server.body_grace
                self.deadline = req.body_started + wait

    def _on_parse_error(self, exc: Exception) -> None:
        self.pause(_P_BROKEN)
        queue = self.queue
        reader = self._reader
        if queue and not queue[-1].keep_alive and reader.parsing is None:
            return  # bytes after a `Connection: close` request: ignored
        status, code, message = reader.refusal()
        log.debug("proxy: bad request from %s: %s", self.peer.decode(), exc)
        cur = reader.parsing
        reader.drop()
        if cur is not None and cur.headers_done:
            # The error is inside the body of a request already queued.
            if cur is self.active:
                self._forwarder.abandon(cur)
                if cur.responded:
                    self.close()
                else:
                    self.send_error(cur, status, code, message, close=True)
            else:
                cur.error = (status, code, message)
            return
        bad = Request()
        bad.error = (status, code, message)
        bad.body_done = True
        queue.append(bad)

    # -- request dispatch (the forwarder's part) ------------------------------------------

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self.queue and self.active is None and not self.closed:
                req = self.queue[0]
                self.active = req
                if req.error is not None:
                    self.send_error(req, *req.error, close=True)
                else:
                    self._forwarder.dispatch(req)
        finally:
            self._pumping = False

    def forward(self, req: Request, reroute: bool = False) -> None:
        """Send a routed request on (the reader calls it once a held body is whole)."""
        self._forwarder.forward(req, reroute)

    def refuse(self, req: Request, status: int, code: str, message: str) -> None:
        """Answer `req` before its body is read whole, and read nothing more."""
        self.pause(_P_BROKEN)
        self._reader.drop()
        self.send_error(req, status, code, message, close=True)

    # -- responses (what the upstream side calls: its `ClientSide`) --------------------------

    def write(self, data: bytes) -> None:
        cork = self.cork
        if cork is not None:
            cork.append(data)
        elif not self.closed:
            self._bytes_out += len(data)
            self.transport.write(data)  # type: ignore[union-attr]

    def keep_alive(self, req: Request) -> bool:
        """Whether the connection stays open after the response to `req`."""
        return req.keep_alive and req.body_done and not self._eof and not self._server.stopping

    def send_error(
        self, req: Request, status: int, code: str, message: str, *, close: bool = False, retry_after: int = 0
    ) -> None:
        keep = not close and self.keep_alive(req)
        if not req.request_id:
            req.request_id = next(self._ids)
        req.status = status
        self.write(
            error_response(
                status,
                code,
                message,
                as_json=req.accept_json,
                request_id=req.request_id,
                keep=keep,
                http11=req.http11,
                head_only=req.method == b"HEAD",
                hsts=req.hsts,
                retry_after=retry_after,
            )
        )
        req.responded = True
        self.finish(req, close=not keep)

    def finish(self, req: Request, close: bool) -> None:
        """The response to `req` (the head of the queue) is complete."""
        req.finished = True
        req.sink = None
        if req.body or req.spool is not None:
            if req.held or req.spool is not None:
                self._server.bodies.free(req)
            else:
                req.body = ()
        queue = self.queue
        if queue and queue[0] is req:
            queue.popleft()
        self.active = None
        self._served += 1
        self._forwarder.release()
        self.record(req)
        if close or self.closed or self._eof:
            self.close()
            return
        reader = self._reader
        if not queue and not self.paused and not self._upgrade_wait and reader.parsing is None:
            # The usual end of a keep-alive exchange: wait for the next request.
            if self._server.stopping:
                self.close()
            else:
                self.deadline = self._loop.time() + self._server.idle_timeout
            return
        if self.paused & _P_UPSTREAM:
            self.resume(_P_UPSTREAM)
        if self._upgrade_wait and not queue:
            # The app declined the upgrade: what followed is HTTP again.
            self._upgrade_wait = False
            data, self._leftover = self._leftover, b""
            if data:
                self._feed(data)
                if self.closed:
                    return
        if self.paused & _P_QUEUE and len(queue) < PIPELINE_MAX:
            self.resume(_P_QUEUE)
        elif not self.paused and not queue and reader.parsing is None:
            self.deadline = self._loop.time() + self._server.idle_timeout
        if self._server.stopping and not queue and reader.parsing is None:
            self.close()
            return
        if queue:
            self._pump()

    def record(self, req: Request) -> None:
        """Note a finished exchange. Its app's metrics and its access-log line are made from the note
        off the hot path (`ProxyServer._fold`)."""
        now = _now()
        bytes_in = self._bytes_in
        bytes_out = self._bytes_out
        route = req.route or _NO_ROUTE
        self._finished.append(
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
                self.peer,
            )
        )
        self._in_mark = bytes_in
        self._out_mark = bytes_out

    def upstream_failed(self, req: Request, status: int, code: str, message: str, retry: bool) -> None:
        """The upstream relaying `req` failed; `retry`: nothing of the response came, it may go again."""
        self._forwarder.failed(req, status, code, message, retry)

    def start_tunnel(self, up: Upstream, tail: bytes) -> None:
        """The app switched protocols: from now on bytes go both ways unread (`tail` came with the 101)."""
        self._tunnel = True
        self._upgrade_wait = False
        self.deadline = self._loop.time() + self._server.tunnel_idle_timeout  # moved on by bytes either way
        leftover, self._leftover = self._leftover, b""
        if tail:
            self.write(tail)
        if leftover:
            up.write(leftover)
        self.resume(_P_QUEUE)

    # -- flow control & lifecycle --------------------------------------------------------

    def pause(self, reason: int) -> None:
        """Stop reading from the client for `reason` (a bit of the pause reasons), until `resume`."""
        if not self.paused and not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.deadline = None
            self._paused_at = self._loop.time()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        if not self.paused & reason:
            return
        self.paused &= ~reason
        if self.paused or self.closed:
            return
        self.transport.resume_reading()  # type: ignore[union-attr]
        server = self._server
        now = self._loop.time()
        if self._tunnel:
            self.deadline = now + server.tunnel_idle_timeout
            return
        req = self._reader.parsing
        if req is not None:
            if req.headers_done:
                req.body_started += now - self._paused_at  # time the proxy did not read is not the client's
                self.deadline = self._reader.body_deadline(req, now)
            else:
                self.deadline = now + server.header_timeout
        elif not self.queue:
            self.deadline = now + (server.idle_timeout if self._served else server.header_timeout)
        else:
            self.deadline = None

    def on_timeout(self) -> None:
        """A deadline passed (the server's sweep calls it)."""
        self.deadline = self.write_deadline = None
        log.debug("proxy: client %s timed out", self.peer.decode())
        req = self._reader.parsing
        queue = self.queue
        # A request arriving too slowly (slowloris) gets 408 if it is the next one to be answered.
        if (
            req is not None
            and not self.write_paused
            and not self.closed
            and ((not req.headers_done and not queue) or (req.headers_done and queue[0] is req and not req.responded))
        ):
            self._forwarder.stop()
            self.refuse(req, 408, "request_timeout", "the request was not received in time")
            return
        self.close()

    def shutdown_if_idle(self) -> None:
        """The proxy stops: close now unless a request is being answered (it closes after it)."""
        if self._tunnel or (not self.queue and self._reader.parsing is None):
            self.close()

    def close(self) -> None:
        if not self.closed:
            self._drop()
            self.transport.close()  # type: ignore[union-attr]

    def abort(self) -> None:
        self._drop()
        if self.transport is not None and not self._lost:
            self.transport.abort()

    def _drop(self) -> None:
        """The connection ends: its exchange (or tunnel) and every body it holds go."""
        self.closed = True
        self.deadline = None
        self._forwarder.stop(self._tunnel)
        self._reader.free_bodies(self.queue)
