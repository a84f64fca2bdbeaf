"""One request on an HTTP/2 connection (proxy_h2.py): the client side its `Forwarder` and `Upstream` see.

An `H2Stream` routes and forwards its request through its own `Forwarder`, exactly as a
`Downstream` does for HTTP/1.1; the upstream writes it an HTTP/1.1 response, which it reads back
(httptools), stripped of HTTP/1.1's own headers, and hands to its connection as h2 HEADERS and
DATA within the client's windows. Request body bytes are acknowledged only once they have left
the proxy's hands. It knows its connection only as a `StreamOwner`; h2's state machine, the
streams' bookkeeping and the hostile-client limits are the connection's.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import h2.connection
import httptools
from h2.errors import ErrorCodes

from lbsolo.proxy_buffering import CANNOT_HOLD, CannotHold
from lbsolo.proxy_forward import Forwarder
from lbsolo.proxy_http import _P_BUFFER, _PHRASES, _now, _render_error
from lbsolo.proxy_request import Request
from lbsolo.proxy_routes import Route

if TYPE_CHECKING:
    from lbsolo.proxy_downstream import Edge
    from lbsolo.proxy_upstream import Upstream

__all__ = ["H2Stream", "StreamOwner"]

log = logging.getLogger("lbsolo.proxy")

_HIGH = 256 * 1024  # response bytes a stream holds for its client before its app is not read
_LOW = 64 * 1024  # ... and read again

_UNROUTED = Route("(unrouted)")
# Response headers that are HTTP/1.1's own (RFC 9113, 8.2.2) or the proxy's: never sent as h2.
_RESP_DROP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te", b"trailer"}
)
_STATUS = {s: b"%d" % s for s in _PHRASES}


class StreamOwner(Protocol):
    """What a stream asks of its connection (proxy_h2.H2Connection)."""

    peer: bytes
    server: Edge
    loop: Any

    def ack(self, sid: int, size: int) -> None: ...
    def dirty(self, st: H2Stream) -> None: ...
    def done(self, st: H2Stream) -> None: ...
    def reset(self, st: H2Stream, code: int) -> None: ...


class H2Stream:
    """One request on an HTTP/2 connection: the client connection its `Forwarder` and `Upstream` see."""

    __slots__ = (
        "_conn",
        "_forwarder",
        "_interim",
        "_parser",
        "_resp_headers",
        "active",
        "bytes_in",
        "bytes_out",
        "closed",
        "cork",
        "deadline",
        "end_sent",
        "ended",
        "head",
        "headers_sent",
        "paused",
        "peer",
        "pending",
        "pending_size",
        "read_by",
        "remote_ended",
        "req",
        "sid",
        "unacked",
        "write_by",
        "write_paused",
    )

    proto = b"https"

    def __init__(self, conn: StreamOwner, sid: int) -> None:
        self._conn = conn
        self.sid = sid
        self.peer = conn.peer
        self.req: Request | None = None
        self.active: Request | None = None  # the request, until its response is complete
        self.paused = 0  # _P_BUFFER: body bytes wait unacknowledged; _P_UPSTREAM: the app does not read
        self.write_paused = False  # the client's window is shut: the app's response is not read
        self.closed = False
        self.cork: list[bytes] | None = None
        self.deadline: float | None = None  # a tunnel's (never: no upgrades over h2)
        self.read_by: float | None = None  # the request body must move on by then
        self.write_by: float | None = None  # the client must open its window by then
        self.unacked = 0  # body bytes received, not yet acknowledged
        self.remote_ended = False  # the client's END_STREAM came
        self.head: list[tuple[bytes, bytes]] | None = None  # the response head, once known
        self.headers_sent = False
        self.pending: deque[bytes] = deque()  # response body not yet sent
        self.pending_size = 0
        self.ended = False  # the response is complete (END_STREAM goes with its last bytes)
        self.end_sent = False
        self.bytes_in = self.bytes_out = 0
        self._parser: Any = None  # the HTTP/1.1 response the upstream writes, read back
        self._resp_headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._forwarder = Forwarder(self, conn.server, conn.loop)

    # -- the request, from the client ------------------------------------------------------

    def start(self, req: Request) -> None:
        self.req = self.active = req
        if req.error is not None:
            self.send_error(req, *req.error)
            return
        if not req.body_done:
            self._arm_read()
        self._forwarder.dispatch(req)

    def on_data(self, data: bytes, flow: int) -> None:
        conn = self._conn
        req = self.active
        size = len(data)
        self.bytes_in += size
        if req is None or req.finished or req.body_done or self.closed:
            conn.ack(self.sid, flow)  # answered already: dropped, the window stays open
            return
        req.received += size
        limit = req.limit
        if limit is not None and req.received > limit:
            conn.ack(self.sid, flow)
            self.refuse(req, 413, "body_too_large", "request body too large")
            return
        sink = req.sink
        if sink is not None:
            sink.send_body(data)
            self.unacked += flow
            if not self.paused:
                self._ack()
        elif req.held:
            try:
                if req.spool is not None:
                    conn.server.bodies.write(req, data)
                else:
                    conn.server.bodies.add(req, data)
            except CannotHold:
                conn.ack(self.sid, flow)
                self.refuse(req, *CANNOT_HOLD)
                return
            conn.ack(self.sid, flow)
        else:  # waiting for a connection to the app: kept, not acknowledged (the window bounds it)
            if req.body:
                req.body.append(data)  # type: ignore[union-attr]
            else:
                req.body = [data]
            req.body_size += size
            self.unacked += flow
            self.paused |= _P_BUFFER
        self._arm_read()

    def on_end(self) -> None:
        req = self.active
        self.read_by = None
        self.remote_ended = True
        if req is None or req.body_done or req.finished:
            return
        req.body_done = True
        sink = req.sink
        if sink is not None:
            sink.end_body()
        if req.held:
            self._forwarder.forward(req, True)

    def _arm_read(self) -> None:
        req = self.active
        if req is None:
            return
        server = self._conn.server
        now = self._conn.loop.time()
        by = now + server.read_timeout
        rate = server.body_min_rate
        if rate > 0:
            by = min(by, req.body_started + server.body_grace + req.received / rate)
        self.read_by = by

    def _ack(self) -> None:
        if self.unacked:
            self._conn.ack(self.sid, self.unacked)
            self.unacked = 0

    # -- what the forwarder and the upstream call (Forwarding, ClientSide) ------------------

    def forward(self, req: Request, reroute: bool = False) -> None:
        self._forwarder.forward(req, reroute)

    def keep_alive(self, req: Request) -> bool:
        return True  # the stream ends with its response; the connection goes on

    def write(self, data: bytes) -> None:
        """HTTP/1.1 response bytes from the upstream side (or the proxy's own answers): read back."""
        cork = self.cork
        if cork is not None:
            cork.append(data)
            return
        if self.closed:
            return
        parser = self._parser
        if parser is None:
            self._parser = parser = httptools.HttpResponseParser(self)
        # What the proxy writes is well-formed; what follows a HEAD response's head may not parse.
        with contextlib.suppress(httptools.HttpParserError):
            parser.feed_data(data)
        self._conn.dirty(self)

    # httptools' callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname not in _RESP_DROP:
            self._resp_headers.append((lname, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        headers, self._resp_headers = self._resp_headers, []
        if status < 200:  # 100 Continue and friends: h2 clients do without
            self._interim = True
            return
        headers.insert(0, (b":status", _STATUS.get(status) or b"%d" % status))
        self.head = headers

    def on_body(self, data: bytes) -> None:
        if not self._interim:
            self._queue(data)

    def on_message_complete(self) -> None:
        self._interim = False

    def _queue(self, data: bytes) -> None:
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > _HIGH and not self.write_paused:
            self.write_paused = True
            up = self._forwarder.up
            if up is not None:
                up.pause_read()

    def finish(self, req: Request, close: bool) -> None:
        """The response to the request is complete (`close` means nothing here: only the stream ends)."""
        req.finished = True
        req.sink = None
        if req.body or req.spool is not None:
            if req.held or req.spool is not None:
                self._conn.server.bodies.free(req)
            else:
                req.body = ()
        self.active = None
        self._forwarder.release()
        self.record(req)
        self.ended = True
        self.read_by = None
        if not req.body_done:
            self._ack()  # what the app took is acknowledged; the rest is refused when the stream ends
        self._conn.dirty(self)

    def send_error(
        self, req: Request, status: int, code: str, message: str, *, close: bool = False, retry_after: int = 0
    ) -> None:
        if not req.request_id:
            req.request_id = next(self._conn.server.request_ids)
        body, ctype = _render_error(status, code, message, req.accept_json, retry_after)
        self.head = [
            (b":status", _STATUS[status]),
            (b"content-type", ctype),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-store"),
            (b"x-request-id", req.request_id),
        ]
        if req.hsts:  # always over TLS here
            self.head.append((b"strict-transport-security", req.hsts.partition(b": ")[2].rstrip()))
        if retry_after:
            self.head.append((b"retry-after", b"%d" % retry_after))
        self.pending.clear()
        self.pending_size = 0
        if req.method != b"HEAD":
            self._queue(body)
        req.status = status
        req.responded = True
        self.finish(req, close)

    def refuse(self, req: Request, status: int, code: str, message: str) -> None:
        """Answer before the body is read whole; the rest of it is refused (RST_STREAM NO_ERROR)."""
        self._forwarder.stop()
        self.send_error(req, status, code, message)

    def record(self, req: Request) -> None:
        now = _now()
        route = req.route or _UNROUTED
        self._conn.server.finished.append(
            (
                now,
                route.app,
                route.release,
                req.method,
                req.url,
                req.status,
                self.bytes_in,
                self.bytes_out,
                now - req.started,
                req.upstream_time,
                req.request_id,
                self.peer,
            )
        )

    def upstream_failed(self, req: Request, status: int, code: str, message: str, retry: bool) -> None:
        self._forwarder.failed(req, status, code, message, retry)

    def start_tunnel(self, up: Upstream, tail: bytes) -> None:
        up.close()  # no upgrade is ever asked over h2
        self.abort()

    def pause(self, reason: int) -> None:
        self.paused |= reason

    def resume(self, reason: int) -> None:
        self.paused &= ~reason
        if not self.paused:
            self._ack()

    def close(self) -> None:
        """The exchange failed after its response began: the stream is reset."""
        self.abort()

    def abort(self) -> None:
        if not self.closed:
            self._conn.reset(self, ErrorCodes.INTERNAL_ERROR)

    # -- sending (the connection calls it when it writes) ----------------------------------

    def send(self, h2conn: h2.connection.H2Connection) -> None:
        """Move what is ready into h2's output, within the stream's and the connection's windows."""
        if self.closed or self.end_sent:
            return
        sid = self.sid
        if not self.headers_sent:
            head = self.head
            if head is None:
                return
            end = self.ended and not self.pending
            h2conn.send_headers(sid, head, end_stream=end)
            self.headers_sent = True
            self.bytes_out += sum(len(k) + len(v) for k, v in head)
            if end:
                self.end_sent = True
                self._conn.done(self)
                return
        pending = self.pending
        while pending:
            window = min(h2conn.local_flow_control_window(sid), h2conn.max_outbound_frame_size)
            if window <= 0:
                if self.write_by is None:
                    self.write_by = self._conn.loop.time() + self._conn.server.read_timeout
                break
            chunk = pending[0]
            if len(chunk) > window:
                pending[0] = chunk[window:]
                chunk = chunk[:window]
            else:
                pending.popleft()
            self.pending_size -= len(chunk)
            self.bytes_out += len(chunk)
            end = self.ended and not pending
            h2conn.send_data(sid, chunk, end_stream=end)
            if end:
                self.end_sent = True
        else:
            self.write_by = None
        if self.write_paused and self.pending_size <= _LOW:
            self.write_paused = False
            up = self._forwarder.up
            if up is not None:
                up.resume_read()
        if self.ended and not pending:
            if not self.end_sent:
                h2conn.end_stream(sid)
                self.end_sent = True
            self._conn.done(self)

    def check(self, now: float) -> None:
        """The connection's tick: a request body or a client's window that did not move in time."""
        req = self.active
        if self.read_by is not None and self.read_by <= now and not self.paused:
            self.read_by = None
            if req is not None and not req.responded:
                self.refuse(req, 408, "request_timeout", "the request was not received in time")
                return
        if self.write_by is not None and self.write_by <= now:
            log.debug("proxy: h2 client %s did not read stream %d in time", self.peer.decode(), self.sid)
            self._conn.reset(self, ErrorCodes.CANCEL)

    def drop(self) -> None:
        """The stream ends before its response did (reset, or the connection closes)."""
        self.closed = True
        self.read_by = self.write_by = None
        self._forwarder.stop()
        req = self.req
        if req is not None:
            self._conn.server.bodies.free(req)
        self.pending.clear()
        self.pending_size = 0
