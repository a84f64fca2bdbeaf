"""HTTP/2 to clients on the HTTPS listener: one `H2Connection` per connection whose client chose `h2`.

The listener offers `h2` and `http/1.1` by ALPN (proxy_tls); a client that picks h2 gets this
protocol instead of a `Downstream`. Each stream is one request, routed and sent on exactly as an
HTTP/1.1 one: an `H2Stream` (proxy_h2_stream.py) is the client connection (`Forwarding`, `ClientSide`) of its own
`Forwarder`, so the proxy's own answers (404, 503, 413, the ACME challenge), request buffering,
the target pool and its HTTP/1.1 keep-alive upstream connections are the same code. The upstream
side writes an HTTP/1.1 response to the stream as it would to a `Downstream`; the stream reads it
back (httptools), drops the connection-specific headers and sends HEADERS and DATA within the
client's flow-control windows. Request bodies are acknowledged (WINDOW_UPDATE) only once they have
left the proxy's hands (written to the app, or counted in the held bodies), so a client can never
make it buffer more than its windows.

Hostile clients: frames python-hyper's h2 rejects (a bad preface, a malformed frame, a CONTINUATION
flood past its backlog, a header list past the advertised size) end the connection with GOAWAY;
streams past `MAX_STREAMS` are refused (REFUSED_STREAM); resets are counted and a connection
resetting far more streams than it completes is closed (ENHANCE_YOUR_CALM: CVE-2023-44487); a
head past the HTTP/1.1 path's bounds gets 431; a stream whose client stops reading is reset after
the read timeout, its app's response paused meanwhile.

What it must not do: be imported unless a client chose h2 (h2 and its parts cost the idle daemon
memory it does not have), route or pick targets (the forwarder does), write a second upstream
client, or touch HTTP/1.1 connections. It and its streams (proxy_h2_stream.py) are the only
importers of h2, hpack and hyperframe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from lbsolo.proxy_h2_stream import H2Stream
from lbsolo.proxy_http import (
    _MAX_HEAD_BYTES,
    _MAX_HEADERS,
    _REQUEST_ID_OK,
    _X_FORWARDED,
    _now,
)
from lbsolo.proxy_request import Request

if TYPE_CHECKING:
    from lbsolo.proxy_downstream import Edge

__all__ = ["MAX_STREAMS", "H2Connection"]

log = logging.getLogger("lbsolo.proxy")

MAX_STREAMS = 128  # SETTINGS_MAX_CONCURRENT_STREAMS; streams past it are refused
_HARD_STREAMS = 2 * MAX_STREAMS  # past this many open streams h2 itself ends the connection
_CONN_WINDOW = 1 << 20  # request body bytes a connection may have unacknowledged, all streams together
_RESETS_FREE = 100  # resets (the client's and the proxy's refusals) a connection may cause before...
_RESETS_PER_SERVED = 4  # ... it must complete one stream per this many more, or it is closed
_TICK = 0.5  # seconds between checks of a connection's streams' deadlines

# Request headers not copied into the head for the app (hop-by-hop, framing and forwarding ones,
# which are looked at one by one; h2 itself refuses Connection and friends).
_REQ_LOOKED = frozenset(
    {
        b"host",
        b"content-length",
        b"accept",
        b"expect",
        b"te",
        b"x-request-id",
        b"cookie",
        b"forwarded",
        b"x-real-ip",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
    }
)


class H2Connection(asyncio.Protocol):
    """An HTTP/2 connection from a client: h2's state machine, its streams, its deadlines."""

    __slots__ = (
        "_counted",
        "_dirty",
        "_flush_at",
        "_goaway",
        "_h2",
        "_last_id",
        "_lost",
        "_resets",
        "_served",
        "closed",
        "deadline",
        "loop",
        "peer",
        "server",
        "streams",
        "transport",
        "trusted",
        "write_deadline",
        "write_paused",
    )

    def __init__(self, server: Edge) -> None:
        self.server = server
        loop = server.loop
        assert loop is not None
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.peer = b""
        self.trusted = False
        self.streams: dict[int, H2Stream] = {}
        self.closed = False
        self._lost = False
        self._counted = False
        self.deadline: float | None = None
        self.write_deadline: float | None = None
        self.write_paused = False
        self._dirty: dict[int, H2Stream] = {}
        self._flush_at: asyncio.Handle | None = None
        self._goaway = False  # GOAWAY sent: streams above _last_id are refused
        self._last_id = 0
        self._resets = 0
        self._served = 0
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self._h2 = conn = h2.connection.H2Connection(config)
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 2 * _MAX_HEAD_BYTES,
            },
        )
        # What h2's HPACK decoder takes before it ends the connection (h2 applies only settings changed
        # after the first SETTINGS): the advertised size. Heads between _MAX_HEAD_BYTES and it get 431.
        conn.decoder.max_header_list_size = 2 * _MAX_HEAD_BYTES

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0]).encode()
            self.trusted = server.trusts(str(peer[0]))
        if not server.admit(self, self.peer, self.trusted):  # type: ignore[arg-type]
            self.closed = True
            self.transport.close()
            return
        self._counted = True
        conn = self._h2
        conn.initiate_connection()
        # Advertised: MAX_STREAMS. Enforced by h2 once the client has acknowledged it: twice that, so
        # that a client going past the advertised limit gets REFUSED_STREAM here (RFC 9113, 5.1.2)
        # rather than h2's connection error. The pending value is never sent.
        conn.local_settings.max_concurrent_streams = _HARD_STREAMS
        conn.increment_flow_control_window(_CONN_WINDOW - 65535)
        self.transport.write(conn.data_to_send())
        if server.stopping:
            self.shutdown_if_idle()
            return
        self.deadline = self.loop.time() + server.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._drop()
        if self._counted:
            self._counted = False
            self.server.leave(self, self.peer)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("proxy: h2 protocol error from %s: %s", self.peer.decode(), exc)
            self._fail(getattr(exc, "error_code", ErrorCodes.PROTOCOL_ERROR))
            return
        except Exception:
            log.exception("proxy: internal error while reading an h2 connection")
            self._fail(ErrorCodes.INTERNAL_ERROR)
            return
        streams = self.streams
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                st = streams.get(event.stream_id)
                if st is not None:
                    st.on_data(event.data, event.flow_controlled_length)
                else:
                    self.ack(event.stream_id, event.flow_controlled_length)
            elif kind is h2.events.RequestReceived:
                self._request(event)
            elif kind is h2.events.StreamEnded:
                st = streams.get(event.stream_id)
                if st is not None:
                    st.on_end()
            elif kind is h2.events.StreamReset:
                st = streams.get(event.stream_id)
                if st is not None:
                    self._forget(st)
                if event.remote_reset and self._reset_counted():
                    return
            elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
                for st in streams.values():
                    if st.pending or (st.ended and not st.end_sent):
                        self._dirty[st.sid] = st
            elif kind is h2.events.ConnectionTerminated:
                self._goaway = True
                self._last_id = self._h2.highest_inbound_stream_id
                if not streams:
                    self._flush()
                    self.close()
                    return
            if self.closed:
                return
        self._flush()

    def pause_writing(self) -> None:
        # The client does not read: read nothing more from it either (its frames could only ask for
        # more output), and give it the read timeout to start again.
        self.write_paused = True
        self.write_deadline = self.loop.time() + self.server.read_timeout
        if not self.closed:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_deadline = None
        if self.closed:
            return
        self.transport.resume_reading()  # type: ignore[union-attr]
        for st in self.streams.values():
            if st.pending or (st.ended and not st.end_sent) or (st.head is not None and not st.headers_sent):
                self._dirty[st.sid] = st
        self._flush()

    # -- streams -------------------------------------------------------------------------

    def _request(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        conn = self._h2
        if (self._goaway and sid > self._last_id) or len(self.streams) >= MAX_STREAMS:
            conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            self._reset_counted()
            return
        self.deadline = self.loop.time() + _TICK
        st = self.streams[sid] = H2Stream(self, sid)
        st.remote_ended = ended = event.stream_ended is not None
        req = self._read_head(event.headers, ended)
        st.start(req)

    def _read_head(self, headers: list[tuple[bytes, bytes]], ended: bool) -> Request:
        """The `Request` an h2 request head makes: the same fields the HTTP/1.1 reader fills."""
        req = Request()
        req.started = _now()
        req.http11 = req.keep_alive = req.headers_done = True
        req.body_done = ended
        req.body_started = self.loop.time()
        trusted = self.trusted
        method = path = authority = b""
        size = 0
        cookies: list[bytes] = []
        host = b""
        parts: list[bytes] = []
        extend = parts.extend
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
                elif name == b":authority":
                    authority = value
                continue
            if name not in _REQ_LOOKED:
                if trusted or not name.startswith(_X_FORWARDED):
                    extend((name, b": ", value, b"\r\n"))
            elif name == b"host":
                host = value
            elif name == b"content-length":
                req.has_length = True
                if value.isdigit():
                    req.content_length = int(value)
                extend((name, b": ", value, b"\r\n"))
            elif name == b"cookie":
                cookies.append(value)  # h2 may split one Cookie header; HTTP/1.1 wants one (RFC 9113, 8.2.3)
            elif name == b"accept":
                low = value.lower()
                req.accept_json = b"application/json" in low and b"text/html" not in low
                extend((name, b": ", value, b"\r\n"))
            elif name == b"x-request-id":
                if _REQUEST_ID_OK(value):
                    req.request_id = value
            elif not trusted:
                pass  # who the client is comes from the connection; Expect and TE are h2's business
            elif name == b"x-forwarded-for":
                req.xff = value if not req.xff else req.xff + b", " + value
            elif name == b"x-forwarded-proto":
                if value.lower() in (b"http", b"https"):
                    req.proto = value.lower()
            elif name in (b"forwarded", b"x-real-ip"):
                extend((name, b": ", value, b"\r\n"))
        req.method = method
        req.url = path
        req.host = authority or host
        if cookies:
            extend((b"cookie: ", b"; ".join(cookies), b"\r\n"))
        req.head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s" % (method, path, req.host, b"".join(parts))
        if not req.request_id:
            req.request_id = next(self.server.request_ids)
        if not ended and not req.has_length:
            req.chunked = True  # a body of unknown length: chunked to the app, or with its length once held
        if size > _MAX_HEAD_BYTES or len(headers) > _MAX_HEADERS + 4:
            req.error = (431, "bad_request", "request head too large")
        elif method == b"CONNECT":
            req.error = (
                405,
                "method_not_allowed",
                "CONNECT is not supported over HTTP/2 (WebSockets work over HTTP/1.1)",
            )
        elif not req.host:
            req.error = (400, "bad_request", "missing :authority and Host")
        elif not path.startswith(b"/") and not (path == b"*" and method == b"OPTIONS"):
            req.error = (400, "bad_request", "the request target must be a path")
        return req

    def ack(self, sid: int, size: int) -> None:
        """Give the client back `size` bytes of window (the body left the proxy's hands)."""
        if size and not self.closed:
            self._h2.acknowledge_received_data(size, sid)
            self._schedule()

    def dirty(self, st: H2Stream) -> None:
        """`st` has something to send: it goes out with the next write (one per loop iteration)."""
        self._dirty[st.sid] = st
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_at is None and not self.closed:
            self._flush_at = self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        handle = self._flush_at
        if handle is not None:
            handle.cancel()
            self._flush_at = None
        if self.closed:
            return
        conn = self._h2
        dirty = self._dirty
        if dirty and not self.write_paused:
            self._dirty = {}
            try:
                for st in dirty.values():
                    st.send(conn)
            except h2.exceptions.ProtocolError as exc:  # a stream the client reset meanwhile
                log.debug("proxy: h2 stream dropped while sending: %s", exc)
        data = conn.data_to_send()
        if data:
            self.transport.write(data)  # type: ignore[union-attr]

    def done(self, st: H2Stream) -> None:
        """`st`'s response went out whole."""
        if not st.remote_ended:
            # The app answered before the body came whole: the client stops sending (RFC 9113, 8.1).
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.reset_stream(st.sid, ErrorCodes.NO_ERROR)
        self._served += 1
        self._forget(st)

    def reset(self, st: H2Stream, code: int) -> None:
        """End `st` now, with RST_STREAM `code`."""
        if not st.end_sent:
            with contextlib.suppress(h2.exceptions.ProtocolError):  # already closed on h2's side
                self._h2.reset_stream(st.sid, code)
        self._forget(st)
        self._schedule()

    def _forget(self, st: H2Stream) -> None:
        if self.streams.pop(st.sid, None) is None:
            return
        self._dirty.pop(st.sid, None)
        if not st.end_sent:
            st.drop()
        else:
            st.closed = True
        if not self.streams:
            if self._goaway:
                self._flush()
                self.close()
                return
            self.deadline = self.loop.time() + self.server.idle_timeout

    def _reset_counted(self) -> bool:
        """Count a reset; past the budget the connection is closed (rapid reset). True if it was."""
        self._resets += 1
        if self._resets > _RESETS_FREE + _RESETS_PER_SERVED * self._served:
            log.warning("proxy: h2 client %s reset too many streams; connection closed", self.peer.decode())
            self._fail(ErrorCodes.ENHANCE_YOUR_CALM)
            return True
        return False

    # -- timeouts & lifecycle ------------------------------------------------------------

    def on_timeout(self) -> None:
        now = self.loop.time()
        if self.write_deadline is not None and self.write_deadline <= now:
            log.debug("proxy: h2 client %s does not read; closed", self.peer.decode())
            self.abort()
            return
        if not self.streams:
            self.deadline = None
            self._goaway_now(ErrorCodes.NO_ERROR)
            self.close()
            return
        for st in list(self.streams.values()):
            st.check(now)
        if self.streams:
            self.deadline = now + _TICK
        self._flush()

    def shutdown_if_idle(self) -> None:
        """The proxy stops: GOAWAY now; the connection closes once its streams are answered."""
        if self.closed:
            return
        if not self._goaway:
            self._goaway_now(ErrorCodes.NO_ERROR)
        if not self.streams:
            self.close()

    def _goaway_now(self, code: int) -> None:
        """Send GOAWAY without ending h2's state machine: the streams below keep being served."""
        self._goaway = True
        self._last_id = self._h2.highest_inbound_stream_id
        self._flush()
        if not self.closed:
            frame = GoAwayFrame(stream_id=0, last_stream_id=self._last_id, error_code=code)
            self.transport.write(frame.serialize())  # type: ignore[union-attr]

    def _fail(self, code: int) -> None:
        """A connection error: GOAWAY with `code`, then close."""
        if self.closed:
            return
        try:
            self._h2.close_connection(error_code=code)
            data = self._h2.data_to_send()
        except h2.exceptions.ProtocolError:
            data = GoAwayFrame(
                stream_id=0, last_stream_id=self._h2.highest_inbound_stream_id, error_code=code
            ).serialize()
        self.transport.write(data)  # type: ignore[union-attr]
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
        self.closed = True
        self.deadline = self.write_deadline = None
        handle = self._flush_at
        if handle is not None:
            handle.cancel()
            self._flush_at = None
        streams = list(self.streams.values())
        self.streams.clear()
        self._dirty.clear()
        for st in streams:
            st.drop()
