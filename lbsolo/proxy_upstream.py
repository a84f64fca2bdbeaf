"""The proxy's upstream side: one `Upstream` connection to an app replica, relaying one exchange at a time.

It writes the request the client side prepared (with the forwarding headers; a body as it comes,
or whole from memory or from its held file), reads the app's response and streams it back to the
client connection, with backpressure both ways. A whole small response is relayed in one write by
the fast path (`proxy_response` says what its head means and what the client gets); anything else
goes through httptools, calling back the connection's `ResponseReader` (proxy_response_reader),
and the connection ends the exchange as the reader says. Between exchanges the connection is
pooled by the `TargetPool` (proxy_targets); after `101 Switching Protocols` it is one end of a
byte tunnel.

What it must not do: parse or answer a request, pick a target, or touch a client connection other
than through its `ClientSide` methods; a connection whose state after an exchange is uncertain
(a declined upgrade, a body not sent whole, a response read to EOF) is never pooled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import IO, Protocol, cast

import httptools

from lbsolo.proxy_http import _P_UPSTREAM, _now
from lbsolo.proxy_request import Request
from lbsolo.proxy_response import KNOWN_HEADS, closing_lines, read_whole_head
from lbsolo.proxy_response_reader import ResponseReader
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
        "_got",
        "_loop",
        "_lost",
        "_pool",
        "_read_paused",
        "_reader",
        "_req_chunked",
        "_req_sent",
        "_reused",
        "_spool",
        "_timeouts",
        "_tunnel",
        "_write_paused",
        "client",
        "closed",
        "deadline",
        "idle_since",
        "pooled",
        "req",
        "sent_at",
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
        self.closed = False
        self._lost = False
        self._read_paused = False
        self._write_paused = False
        self._tunnel = False
        self.sent_at = 0.0  # when the request went out
        self._req_chunked = False
        self._reused = False
        self._spool: IO[bytes] | None = None  # a held body being sent from its temp file
        self.pooled = False
        self.idle_since = 0.0
        self.deadline: float | None = None  # waiting for the app to answer
        self.write_deadline: float | None = None  # waiting for the app to read the request
        self._got = False  # the parser path read some of this response: the fast path is off
        self._req_sent = False  # all of the request is written
        self._reader = ResponseReader(self, httptools.HttpResponseParser)

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
        elif exc is None and self.req is not None and self.req.responded and self._reader.ends_at_close():
            self._complete(False)
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
        if not self._got and self._relay_whole(client, data):
            return
        self._got = True
        if self.deadline is not None:
            self.deadline = self._loop.time() + self._timeouts.read_timeout
        reader = self._reader
        # Everything this chunk produces for the client goes out in one write.
        client.cork = cork = []
        upgrade_at = -1
        error: Exception | None = None
        try:
            reader.feed(data)
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
        if error is None and reader.head_too_large():
            self._fail(502, "bad_gateway", "app sent a response head that is too large", retry=False)
            return
        if upgrade_at >= 0:
            if reader.status == 101:
                self._start_tunnel(data[upgrade_at:])
            else:
                self._fail(502, "bad_gateway", "app sent an unexpected upgrade", retry=False)
            return
        if error is not None and not reader.done:
            log.warning("proxy: invalid response from %s: %s", self.target, error)
            self._fail(502, "bad_gateway", "app sent an invalid response", retry=False)
            return
        if reader.done:
            self._complete(error is None and reader.keep and not reader.eof_body)

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
        req.upstream_time = _now() - self.sent_at
        keep = client.keep_alive(req)
        req.close_after = not keep
        # req.route is set: the request was routed. Its hsts is b"" unless the app asked and this is TLS.
        closing = closing_lines(req.request_id, req.route.hsts, keep, req.http11)  # type: ignore[union-attr]
        client.write(b"%s\r\n%s%s" % (kept, closing, data[end + 4 :]))
        req.responded = True
        self._complete(not close)
        return True

    # -- what the client side calls -------------------------------------------------------

    def begin(self, client: ClientSide, req: Request, reused: bool) -> None:
        """Relay `req` for `client`: send it (its body too, or as it comes: `send_body`, `end_body`)."""
        if self._got:  # the parser path read the last response: the reader forgets it
            self._got = False
            self._reader.reset()
        self._req_sent = False
        self._spool = None
        self.client = client
        self.req = req
        self._reused = reused
        self.sent_at = _now()
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

    def _complete(self, keep: bool) -> None:
        """The response is relayed whole; `keep`: the app keeps the connection open after it."""
        client = self.client
        req = self.req
        assert client is not None and req is not None
        self.client = None
        self.req = None
        self.deadline = self.write_deadline = None
        req.sink = None
        # A declined upgrade leaves the app's side of the connection in a state the proxy cannot see
        # (an app may still expect a body, or the switched protocol): never reused.
        reusable = keep and self._req_sent and not self._write_paused and not req.upgrade
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
