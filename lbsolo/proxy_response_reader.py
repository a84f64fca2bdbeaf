"""The parser path of an upstream connection: httptools' callbacks, an app's response relayed in pieces.

An `Upstream` (proxy_upstream) relays a whole small response itself, in one write (its fast
path). Any other response (in several reads, chunked, read to EOF, without a body, a 1xx before
it, an upgrade) it feeds to httptools, which calls back the connection's `ResponseReader`. The
reader reads the head once it is parsed (`proxy_response`: the kept headers, the framing), writes
the client its head (interim, final, or the 101 of a tunnel) and the body as it comes, re-framed
when the client gets it otherwise than the app sent it (chunked to an HTTP/1.1 client, up to the
close to an HTTP/1.0 one), and says when the response is done and whether the app keeps the
connection open (`done`, `keep`, `eof_body`).

What it must not do: import httptools (the upstream builds the parser with the reader as its
callbacks and catches its errors), touch the upstream's socket, or pool, fail or close a
connection: the upstream does, from what the reader says. Its state is of one response: the
upstream calls `reset` before the next exchange on a connection whose last response it read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from lbsolo.proxy_http import _M_CHUNKED, _M_CLOSE, _M_LENGTH, _M_NONE, _MAX_HEAD_BYTES, _BadResponse, _now
from lbsolo.proxy_request import Request
from lbsolo.proxy_response import final_head, interim_head, read_response_head, upgrade_head

__all__ = ["Relaying", "ResponseReader", "Writing"]


class Writing(Protocol):
    """What a response reader asks of the client connection it writes to (a `Downstream`)."""

    def write(self, data: bytes) -> None: ...

    def keep_alive(self, req: Request) -> bool: ...


class Relaying(Protocol):
    """The upstream connection a response reader reads for (an `Upstream`)."""

    client: Writing | None  # None once the exchange is over or abandoned
    req: Request | None
    sent_at: float  # when the request went out: the upstream time is counted from it


class ResponseReader:
    __slots__ = (
        "_head_buf",
        "_head_bytes",
        "_interim",
        "_length",
        "_mode",
        "_new_parser",
        "_stale",
        "_te",
        "_up",
        "_upgrade",
        "done",
        "eof_body",
        "keep",
        "parser",
        "status",
    )

    def __init__(self, up: Relaying, parser: Callable[[ResponseReader], Any]) -> None:
        self._up = up
        self._new_parser = parser
        self.parser = parser(self)  # httptools' HttpResponseParser, calling back here
        self._stale = False  # the parser must be replaced before the next response
        self.status = 0  # of the response being read; 0 until its head is parsed (again 0 after a 1xx)
        self._head_buf = b""  # the response head as received (the start of a response)
        self._head_bytes = 0
        self._interim = False  # the head parsed is a 1xx: the final response follows
        self._length: bytes | None = None  # Content-Length value
        self._te: bytes | None = None  # Transfer-Encoding value
        self._upgrade: bytes | None = None
        self._mode = _M_NONE  # how the body goes to the client
        self.done = False  # the response is relayed whole
        self.keep = False  # the app keeps the connection open after it
        self.eof_body = False  # the body ends when the app closes the connection

    def reset(self) -> None:
        """A new exchange begins on the connection: forget the last response."""
        self.status = 0
        self._head_buf = b""
        self._head_bytes = 0
        self.eof_body = False
        self.done = False
        self._interim = False
        if self._stale:
            self._stale = False
            self.parser = self._new_parser(self)

    def feed(self, data: bytes) -> None:
        """More of the response, for the parser (its errors are the caller's to catch)."""
        if not self.status:  # still in the response head
            self._head_bytes += len(data)
            self._head_buf += data
        self.parser.feed_data(data)

    def head_too_large(self) -> bool:
        return not self.status and self._head_bytes > _MAX_HEAD_BYTES

    def ends_at_close(self) -> bool:
        """The app closed the connection after the head of a response whose body ends so: the
        response is done (its last chunk is written when the client gets it chunked). False for
        any other response: it was cut short."""
        if not self.eof_body or self.done:
            return False
        self.done = True
        client = self._up.client
        if self._mode == _M_CHUNKED and client is not None:
            client.write(b"0\r\n\r\n")
        return True

    # -- httptools callbacks -------------------------------------------------------------

    # No on_status/on_header: httptools then makes no Python call per header. The response head is
    # read from the raw bytes by proxy_response.read_response_head, with C-level bytes operations.

    def on_headers_complete(self) -> None:
        up = self._up
        client = up.client
        req = up.req
        if client is None or req is None:
            return
        parser = self.parser
        status = parser.get_status_code()
        self.status = status
        first, self._head_buf, self._length, _, self._te, self._upgrade = read_response_head(self._head_buf, status)
        if status < 200 and status != 101:
            self._interim = True
            if req.http11:
                client.write(interim_head(first))
            return
        if status == 101 and not req.upgrade:
            raise _BadResponse("101 without an upgrade request")
        req.status = status
        req.upstream_time = _now() - up.sent_at
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
            self.eof_body = not chunked
            mode = _M_CHUNKED if req.http11 else _M_CLOSE
        self._mode = mode
        self.keep = parser.should_keep_alive()
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
                hsts=req.route.hsts if req.route is not None else b"",
                keep=keep,
                http11=req.http11,
            )
        client.write(head)
        req.responded = True
        if no_body and status != 101:
            self.done = True

    def on_body(self, data: bytes) -> None:
        if self.done:
            return
        client = self._up.client
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
            self.status = 0
            return
        if not self.done:
            self.keep = self.keep and self.parser.should_keep_alive()
            self.done = True
            client = self._up.client
            if self._mode == _M_CHUNKED and client is not None:
                client.write(b"0\r\n\r\n")
