"""The proxy's upstream side: one `Upstream` connection to an app replica, relaying one exchange at a time.

It writes the request the client side prepared (with the forwarding headers; a body as it comes,
or whole from memory or from its held file), reads the app's response and streams it back to the
client connection, with backpressure both ways. A whole small response is relayed in one write by
the fast path; anything else goes through httptools, and `proxy_response` says what its head means
and what the client gets. Between exchanges the connection is pooled by the `TargetPool`
(proxy_targets); after `101 Switching Protocols` it is one end of a byte tunnel.

What it must not do: parse or answer a request, pick a target, or touch a client connection other
than through its `ClientSide` methods; a connection whose state after an exchange is uncertain
(a declined upgrade, a body not sent whole, a response read to EOF) is never pooled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import IO, Protocol, cast

import httptools

from lbsolo.proxy_http import (
    _M_CHUNKED,
    _M_CLOSE,
    _M_LENGTH,
    _M_NONE,
    _MAX_HEAD_BYTES,
    _P_UPSTREAM,
    _BadResponse,
    _now,
)
from lbsolo.proxy_request import Request
from lbsolo.proxy_response import (
    KNOWN_HEADS,
    closing_lines,
    final_head,
    interim_head,
    read_response_head,
    read_whole_head,
    upgrade_head,
)
from lbsolo.proxy_routes import Target
from lbsolo.proxy_targets import TargetPool

log = logging.getLogger("lbsolo.proxy")

# Bound once: a method call on an imported name compiles to a slower attribute load plus a call.
_known_head = KNOWN_HEADS.get
_SPOOL_CHUNK = 64 * 1024  # bytes of a held body read from its file per write


class Timeouts(Protocol):
    """The proxy's settings an upstream connection reads (read when used: they may be changed)."""

    read_timeout: float
    tunnel_idle_timeout: float


class ClientSide(Protocol):
    """What an upstream connection asks of the client connection it relays for (a `Downstream`)."""

    deadline: float | None  # the tunnel's idle deadline is moved on by the app's bytes too
    cork: list[bytes] | None  # set while one read of the app's is relayed: its writes become one
    peer: bytes  # the client's address, for X-Forwarded-For
    proto: bytes  # b"http" or b"https", for X-Forwarded-Proto

    def write(self, data: bytes) -> None: ...

    def keep_alive(self, req: Request) -> bool: ...

    def finish(self, req: Request, close: bool) -> None: ...

    def record(self, req: Request) -> None: ...

    def upstream_failed(self, req: Request, status: int, code: str, message: str, retry: bool) -> None: ...

    def start_tunnel(self, up: Upstream, tail: bytes) -> None: ...

    def pause(self, reason: int) -> None: ...

    def resume(self, reason: int) -> None: ...

    def close(self) -> None: ...


class Upstream(asyncio.Protocol):
    __slots__ = (
        "_conn_close",
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
        "_pool",
        "_read_paused",
        "_req_chunked",
        "_req_sent",
        "_reused",
        "_sent_at",
        "_spool",
        "_stale",
        "_status",
        "_te",
        "_timeouts",
        "_tunnel",
        "_upgrade",
        "_write_paused",
        "client",
        "closed",
        "deadline",
        "idle_since",
        "pooled",
        "req",
        "target",
        "transport",
        "write_deadline",
    )

    def __init__(self, pool: TargetPool, target: Target, timeouts: Timeouts) -> None:
        self._pool = pool
        self._timeouts = timeouts
        self._loop = pool.loop
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.client: ClientSide | None = None
        self.req: Request | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self.closed = False
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._tunnel = False
        self._stale = True  # the response parser must be replaced before the next exchange
        self._sent_at = 0.0
        self._length: bytes | None = None  # Content-Length value
        self._te: bytes | None = None  # Transfer-Encoding value
        self._upgrade: bytes | None = None
        self._conn_close = False  # the response's Connection header says close
        self._mode = _M_NONE
        self._keep = False
        self._req_chunked = False
        self._reused = False
        self._spool: IO[bytes] | None = None  # a held body being sent from its temp file
        self.pooled = False
        self.idle_since = 0.0
        self.deadline: float | None = None  # waiting for the app to answer
        self.write_deadline: float | None = None  # waiting for the app to read the request
        self._reset()

    def _reset(self) -> None:
        """Per-exchange state (the rest is set for every response before it is read)."""
        self._status = 0
        self._head_buf = b""  # the response head as received (the start of a response)
        self._head_bytes = 0
        self._eof_body = False
        self._done = False
        self._got = False
        self._interim = False
        self._req_sent = False
        self._spool = None

    # -- asyncio callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._pool.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self._lost = True
        self.deadline = None
        pooled = self.pooled
        self._pool.lost(self)
        if pooled:
            return
        client = self.client
        if client is None:
            return
        if self._tunnel:
            self.client = None
            client.close()
        elif exc is None and self._eof_body and self.req is not None and self.req.responded and not self._done:
            self._done = True
            if self._mode == _M_CHUNKED:
                client.write(b"0\r\n\r\n")
            self._complete()
        else:
            self._fail(502, "bad_gateway", "app closed the connection", retry=not self._got)

    def eof_received(self) -> bool | None:
        return False

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is None:
            if not self.closed:
                log.debug("proxy: unexpected data from idle upstream %s", self.target)
                self.close()
            return
        if self._tunnel:
            client.write(data)
            client.deadline = self._loop.time() + self._timeouts.tunnel_idle_timeout
            return
        if not self._status and not self._head_buf and self._relay_whole(client, data):
            return
        self._got = True
        if self.deadline is not None:
            self.deadline = self._loop.time() + self._timeouts.read_timeout
        if not self._status:  # still in the response head
            self._head_bytes += len(data)
            self._head_buf += data
        # Everything this chunk produces for the client goes out in one write.
        client.cork = cork = []
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
            client.cork = None
            if cork:
                client.write(cork[0] if len(cork) == 1 else b"".join(cork))
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
            self.write_deadline = self._loop.time() + self._timeouts.read_timeout
            client.pause(_P_UPSTREAM)

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_deadline = None
        if self._spool is not None:
            self._send_spool()
        client = self.client
        if client is not None:
            client.resume(_P_UPSTREAM)

    # -- httptools callbacks -------------------------------------------------------------

    # No on_status/on_header: httptools then makes no Python call per header. The response head is
    # read from the raw bytes by proxy_response.read_response_head, with C-level bytes operations.

    def on_headers_complete(self) -> None:
        client = self.client
        req = self.req
        if client is None or req is None:
            return
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        self._status = status
        first, self._head_buf, self._length, self._conn_close, self._te, self._upgrade = read_response_head(
            self._head_buf, status
        )
        if status < 200 and status != 101:
            self._interim = True
            if req.http11:
                client.write(interim_head(first))
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
        keep = mode != _M_CLOSE and client.keep_alive(req)
        req.close_after = not keep
        if status == 101:
            head = upgrade_head(first, self._upgrade or req.upgrade_value)
        else:
            head = final_head(
                first,
                reframed=self._length is not None and mode >= _M_CHUNKED,
                chunked=mode == _M_CHUNKED,
                request_id=req.request_id,
                keep=keep,
                http11=req.http11,
            )
        client.write(head)
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
            client.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            client.write(data)

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
                self.client.write(b"0\r\n\r\n")

    # -- exchange ------------------------------------------------------------------------

    def _relay_whole(self, client: ClientSide, data: bytes) -> bool:
        """The fast path: a whole response with a Content-Length body in one read, sent on in one write.

        Most small responses arrive so. It takes exactly the responses the parser path would relay
        unchanged (the head it writes is the one `read_response_head` and `final_head` would make), and returns
        False, having sent nothing, for anything else.
        """
        req = self.req
        end = data.find(b"\r\n\r\n")
        if end < 0 or req is None or req.method == b"HEAD":
            return False
        head = data[:end]
        known = _known_head(head)
        if known is None:
            known = read_whole_head(data, end)
            if known is None:
                return False
        status, length, close, kept = known
        if length != len(data) - end - 4:
            return False
        req.status = status
        req.upstream_time = _now() - self._sent_at
        self._keep = not close
        keep = client.keep_alive(req)
        req.close_after = not keep
        client.write(b"%s\r\n%s%s" % (kept, closing_lines(req.request_id, keep, req.http11), data[end + 4 :]))
        req.responded = True
        self._complete()
        return True

    # -- what the client side calls -------------------------------------------------------

    def begin(self, client: ClientSide, req: Request, reused: bool) -> None:
        """Relay `req` for `client`: send it (its body too, or as it comes: `send_body`, `end_body`)."""
        self._reset()
        self.client = client
        self.req = req
        self._reused = reused
        self._sent_at = _now()
        if self._stale:
            self._stale = False
            self._parser = httptools.HttpResponseParser(self)
        xff = req.xff
        peer = client.peer
        head = b"%sX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Request-Id: %s\r\n" % (
            req.head,
            xff + b", " + peer if xff else peer,
            req.proto or client.proto,
            req.request_id,
        )
        if req.host:
            head += b"X-Forwarded-Host: %s\r\n" % req.host
        if req.body_done and not req.received and not req.chunked and not req.upgrade:  # most requests
            req.replayable = True
            self._req_sent = True
            self.deadline = self._loop.time() + self._timeouts.read_timeout
            self.write(head + b"\r\n")
            return
        parts = [head]
        if req.upgrade:
            parts.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % req.upgrade_value)
        # A body read whole goes with a length, whichever framing the client chose (as nginx does:
        # not every app server takes a chunked request).
        chunked = self._req_chunked = req.chunked and not req.body_done
        if chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif req.chunked:
            parts.append(b"Content-Length: %d\r\n" % req.received)
        parts.append(b"\r\n")
        spool = req.spool
        if spool is not None:  # a held body in a file: sent as the app takes it
            req.replayable = True
            self.write(b"".join(parts))
            spool.seek(0)
            self._spool = spool
            self._send_spool()
            return
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
            self.deadline = self._loop.time() + self._timeouts.read_timeout
        else:
            req.replayable = False
            req.body = ()
            req.body_size = 0
            req.sink = self
        self.write(b"".join(parts))

    def _send_spool(self) -> None:
        """Send the held body from its file until the app's socket buffer is full (resume_writing
        goes on) or the body is all sent. The file is a fresh temp file: reads hit the page cache."""
        spool = self._spool
        assert spool is not None
        while not self._write_paused and not self.closed:
            chunk = spool.read(_SPOOL_CHUNK)
            if not chunk:
                self._spool = None
                self._req_sent = True
                if self.deadline is None and not self._read_paused:
                    self.deadline = self._loop.time() + self._timeouts.read_timeout
                return
            self.write(chunk)

    def send_body(self, data: bytes) -> None:
        if self._req_chunked:
            self.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.write(data)

    def end_body(self) -> None:
        if self._req_chunked:
            self.write(b"0\r\n\r\n")
        self._req_sent = True
        if self.deadline is None and not self._read_paused:
            self.deadline = self._loop.time() + self._timeouts.read_timeout

    def _complete(self) -> None:
        client = self.client
        req = self.req
        assert client is not None and req is not None
        self.client = None
        self.req = None
        self.deadline = self.write_deadline = None
        req.sink = None
        # A declined upgrade leaves the app's side of the connection in a state the proxy cannot see
        # (an app may still expect a body, or the switched protocol): never reused.
        reusable = self._keep and self._req_sent and not self._eof_body and not self._write_paused and not req.upgrade
        if reusable and not self.closed:
            if self._read_paused:
                self.resume_read()
            self._pool.put_idle(self)
        else:
            self.close()
        client.finish(req, close=req.close_after)

    def _fail(self, status: int, code: str, message: str, retry: bool) -> None:
        client = self.client
        req = self.req
        self.client = None
        self.req = None
        self.deadline = self.write_deadline = None
        self.abort()
        if client is not None and req is not None:
            client.upstream_failed(req, status, code, message, retry and self._reused and not self._got)

    def on_timeout(self) -> None:
        """The app made no progress in time (the server's sweep calls it)."""
        if self._tunnel:
            client = self.client
            self.client = None
            self.write_deadline = None
            self.abort()
            if client is not None:
                client.close()
            return
        req = self.req
        log.warning(
            "proxy: app %s (%s:%s) made no progress for %.1fs",
            req.route.app if req is not None and req.route is not None else "?",
            self.target.host,
            self.target.port,
            self._timeouts.read_timeout,
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
            client.record(req)
        client.start_tunnel(self, tail)

    # -- flow control & lifecycle --------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def pause_read(self) -> None:
        if not self._read_paused and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.deadline = None

    def resume_read(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self.closed:
                return
            self.transport.resume_reading()  # type: ignore[union-attr]
            if self.client is not None and self._req_sent and not self._tunnel:
                self.deadline = self._loop.time() + self._timeouts.read_timeout

    def abandon(self) -> None:
        """The client went away mid-exchange: drop the connection."""
        self.client = None
        self.req = None
        self.deadline = None
        self.abort()

    def close(self) -> None:
        self._spool = None
        if not self.closed:
            self.closed = True
            self.deadline = None
            self.transport.close()  # type: ignore[union-attr]

    def abort(self) -> None:
        self.closed = True
        self.deadline = None
        self._spool = None
        if not self._lost:
            self.transport.abort()  # type: ignore[union-attr]
