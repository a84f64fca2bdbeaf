"""The proxy's upstream side: one connection to an app replica, relaying one exchange at a time.

It writes the request the client side prepared, reads the app's response with httptools and
streams it back to the client connection, with backpressure both ways; pooled between exchanges
by the `TargetPool` (proxy_targets) between exchanges; a byte tunnel after `101 Switching Protocols`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import IO, Protocol, cast

import httptools

from lbsolo.proxy_http import (
    _CONN_HEADER,
    _CONN_PLAIN,
    _FINAL_RESPONSE,
    _M_CHUNKED,
    _M_CLOSE,
    _M_LENGTH,
    _M_NONE,
    _MAX_HEAD_BYTES,
    _MAX_HEADERS,
    _P_UPSTREAM,
    _PHRASES,
    _RESP_DROPPED,
    _RESP_HOP,
    _BadResponse,
    _cut,
    _now,
)
from lbsolo.proxy_routes import Route, Target
from lbsolo.proxy_targets import TargetPool

log = logging.getLogger("lbsolo.proxy")

_SPOOL_CHUNK = 64 * 1024  # bytes of a held body read from its file per write


class Timeouts(Protocol):
    """The proxy's settings an upstream connection reads (read when used: they may be changed)."""

    read_timeout: float
    tunnel_idle_timeout: float


class Request:
    """One request on a client connection, as both sides of the proxy see it.

    Class attributes are the defaults: creating one is cheap."""

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
    xff = b""  # X-Forwarded-For from a trusted proxy
    proto = b""  # X-Forwarded-Proto from a trusted proxy
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
    body: list[bytes] | tuple[()] = ()  # buffered until an upstream takes it (a list once there is some)
    # Routed, and read whole before an upstream is taken (the route buffers requests); stays set
    # until the request ends, for `body` (body_size bytes) is counted in the server's held memory.
    held = False
    spool: IO[bytes] | None = None  # a held body past the memory bound: in an unlinked temp file
    spooled = 0  # bytes in `spool`, counted in the server's budget of held files
    body_started = 0.0  # loop time the body began (moved on by the time reading was paused)
    expect_continue = False
    headers: list[tuple[bytes, bytes]]  # as parsed (set by the parser path only)


class Downstream(Protocol):
    """What an upstream connection asks of the client connection it relays for (`Downstream`)."""

    deadline: float | None
    _cork: list[bytes] | None
    _peer: bytes
    _proto: bytes

    def _write(self, data: bytes) -> None: ...

    def _keep_alive(self, req: Request) -> bool: ...

    def _finish(self, req: Request, close: bool) -> None: ...

    def _record(self, req: Request) -> None: ...

    def _upstream_failed(self, req: Request, status: int, code: str, message: str, retry: bool) -> None: ...

    def _start_tunnel(self, up: _Upstream, tail: bytes) -> None: ...

    def _pause(self, reason: int) -> None: ...

    def _resume(self, reason: int) -> None: ...

    def _close(self) -> None: ...


class _Upstream(asyncio.Protocol):
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
        self.client: Downstream | None = None
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
            if not self.closed:
                log.debug("proxy: unexpected data from idle upstream %s", self.target)
                self.close()
            return
        if self._tunnel:
            client._write(data)
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
            self.write_deadline = self._loop.time() + self._timeouts.read_timeout
            client._pause(_P_UPSTREAM)

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_deadline = None
        if self._spool is not None:
            self._send_spool()
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

    def _relay_whole(self, client: Downstream, data: bytes) -> bool:
        """The fast path: a whole response with a Content-Length body in one read, sent on in one write.

        Most small responses arrive so. It takes exactly the responses the parser path would relay
        unchanged (the head it writes is the one `_classify` and `_head` would make), and returns
        False, having sent nothing, for anything else.
        """
        req = self.req
        end = data.find(b"\r\n\r\n")
        if end < 0 or req is None or req.method == b"HEAD":
            return False
        head = data[:end]
        # An app answers with the same head many times over (it changes with the Date, each second):
        # what the head means is worked out once and remembered.
        known = _KNOWN_HEADS.get(head)
        if known is None:
            known = _read_whole_head(data, end)
            if known is None:
                return False
            if len(head) <= 2048:
                if len(_KNOWN_HEADS) >= 256:
                    _KNOWN_HEADS.clear()
                _KNOWN_HEADS[head] = known
        status, length, close, kept = known
        if length != len(data) - end - 4:
            return False
        req.status = status
        req.upstream_time = _now() - self._sent_at
        self._keep = not close
        keep = client._keep_alive(req)
        req.close_after = not keep
        client._write(b"%s\r\n%s%s" % (kept, _closing_lines(req.request_id, keep, req.http11), data[end + 4 :]))
        req.responded = True
        self._complete()
        return True

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
        self._conn_close = False
        pos = low.find(b"\r\ncontent-length:")
        if pos >= 0:  # left in place: it is kept unless the body is re-framed (see _head)
            end = low.find(b"\r\n", pos + 2)
            self._length = block[pos + 17 : end if end >= 0 else len(block)].strip()
        if _RESP_HOP(low) is not None:
            block, self._conn_close, self._te, self._upgrade = _strip_hop(block, low)
        return [b"HTTP/1.1" + line + block + b"\r\n"]

    def _head(self, status: int, parts: list[bytes], *, keep: bool, mode: int, interim: bool) -> bytes:
        append = parts.append
        if self._length is not None and mode >= _M_CHUNKED:  # re-framed: its Content-Length must go
            head = parts[0][:-2]
            head, _, _ = _cut(head, head.lower(), b"\r\ncontent-length:")
            parts[0] = head + b"\r\n"
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
        assert req is not None
        if mode == _M_CHUNKED:
            append(b"Transfer-Encoding: chunked\r\n")
        append(_closing_lines(req.request_id, keep, req.http11))
        return b"".join(parts)

    def _begin(self, client: Downstream, req: Request, reused: bool) -> None:
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
        head = b"%sX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Request-Id: %s\r\n" % (
            req.head,
            xff + b", " + peer if xff else peer,
            req.proto or client._proto,
            req.request_id,
        )
        if req.host:
            head += b"X-Forwarded-Host: %s\r\n" % req.host
        if req.body_done and not req.received and not req.chunked and not req.upgrade:  # most requests
            req.replayable = True
            self._req_sent = True
            self.deadline = self._loop.time() + self._timeouts.read_timeout
            self._write(head + b"\r\n")
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
            self._write(b"".join(parts))
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
        self._write(b"".join(parts))

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
            self._write(chunk)

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
                self._resume_read()
            self._pool.put_idle(self)
        else:
            self.close()
        client._finish(req, close=req.close_after)

    def _fail(self, status: int, code: str, message: str, retry: bool) -> None:
        client = self.client
        req = self.req
        self.client = None
        self.req = None
        self.deadline = self.write_deadline = None
        self.abort()
        if client is not None and req is not None:
            client._upstream_failed(req, status, code, message, retry and self._reused and not self._got)

    def _on_read_timeout(self) -> None:
        if self._tunnel:
            client = self.client
            self.client = None
            self.write_deadline = None
            self.abort()
            if client is not None:
                client._close()
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
            client._record(req)
        client._start_tunnel(self, tail)

    # -- flow control & lifecycle --------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)  # type: ignore[union-attr]

    def _pause_read(self) -> None:
        if not self._read_paused and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]
            self.deadline = None

    def _resume_read(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self.closed:
                return
            self.transport.resume_reading()  # type: ignore[union-attr]
            if self.client is not None and self._req_sent and not self._tunnel:
                self.deadline = self._loop.time() + self._timeouts.read_timeout

    def _abandon(self) -> None:
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


# Response heads already read by the fast path: raw head -> (status, Content-Length, Connection:
# close, the head as sent on without its hop-by-hop lines). Bounded: cleared when full.
_KNOWN_HEADS: dict[bytes, tuple[int, int, bool, bytes]] = {}


def _read_whole_head(data: bytes, end: int) -> tuple[int, int, bool, bytes] | None:
    """What the response fast path needs of a head (`data[:end]`), or None when it is not for it:
    not a valid HTTP/1.1 head with a final status, not exactly one Content-Length (digits), a
    status without a body, or a Transfer-Encoding or Upgrade."""
    found = _FINAL_RESPONSE(data)
    if found is None or found.end() != end + 4:
        return None
    status = int(found[1])
    eol = data.find(b"\r\n")
    block = data[eol:end]
    low = block.lower()
    pos = low.find(b"\r\ncontent-length:")
    if (
        pos < 0
        or low.find(b"\r\ncontent-length:", pos + 17) >= 0  # another one, even an invalid one: the parser's
        or status == 204
        or status == 304
        or block.count(b"\r\n") > _MAX_HEADERS
    ):
        return None
    stop = low.find(b"\r\n", pos + 17)
    length = block[pos + 17 : stop if stop >= 0 else len(block)].strip()
    if not length.isdigit():
        return None
    close = False
    if _RESP_HOP(low) is not None:
        block, close, te, upgrade = _strip_hop(block, low)
        if te is not None or upgrade is not None:
            return None
    line = data[8:eol]  # " 200 OK"
    if line.count(b" ") < 2:
        line = b" %d %s" % (status, _PHRASES.get(status, b""))
    return status, int(length), close, b"HTTP/1.1" + line + block


def _strip_hop(block: bytes, low: bytes) -> tuple[bytes, bool, bytes | None, bytes | None]:
    """A response head block (and its lower-cased copy) without its hop-by-hop headers; also
    whether Connection says close, and the Transfer-Encoding and Upgrade values (None if absent)."""
    close = False
    te = upgrade = None
    # find() rather than `in`: bytes.__contains__ first tries its argument as an int, and the
    # TypeError it raises and clears costs more than the search.
    if low.find(b"\r\nconnection:") >= 0:
        block, low, values = _cut(block, low, b"\r\nconnection:")
        if len(values) == 1 and (plain := values[0].lower()) in _CONN_PLAIN:
            close = plain == b"close"
        else:
            tokens = {t.strip() for v in values for t in v.lower().split(b",")}
            close = b"close" in tokens
            for token in tokens - _CONN_PLAIN:  # more hop-by-hop headers named by the app
                block, low, _ = _cut(block, low, b"\r\n" + token + b":")
    if low.find(b"\r\ntransfer-encoding:") >= 0:
        block, low, values = _cut(block, low, b"\r\ntransfer-encoding:")
        te = b", ".join(values)
    if low.find(b"\r\nupgrade:") >= 0:
        block, low, values = _cut(block, low, b"\r\nupgrade:")
        upgrade = values[0]
    for pattern in _RESP_DROPPED:
        if low.find(pattern) >= 0:
            block, low, _ = _cut(block, low, pattern)
    return block, close, te, upgrade


def _closing_lines(request_id: bytes, keep: bool, http11: bool) -> bytes:
    """The end of a response head towards the client: its request id, a Connection header when
    the client's HTTP version would assume otherwise, and the blank line."""
    return b"X-Request-Id: %s\r\n%s\r\n" % (request_id, b"" if keep and http11 else _CONN_HEADER[keep])
