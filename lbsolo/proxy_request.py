"""What a client's request says: the `Request` both sides of the proxy share, and the reading of its head.

A request head is read one of two ways. The fast path (`KNOWN_REQUESTS`, `read_simple_request`)
takes a whole GET or HEAD with plain end-to-end headers from its raw bytes with a strict regex, and
remembers what a head it has seen means; the parser path (proxy_reader, over httptools) hands the parsed headers to
`RequestReader.on_headers_complete`, which notes what the proxy acts on and copies the end-to-end
headers into the head sent to the app.

What it must not do: any I/O, hold state beyond the bounded table of known simple requests, or
import httptools (it is the pure part: tested with bytes, no sockets).
"""

from __future__ import annotations

from typing import IO, Protocol

from lbsolo.proxy_http import (
    _MAX_HEAD_BYTES,
    _MAX_HEADERS,
    _NOT_SIMPLE,
    _SIMPLE_REQUEST,
)
from lbsolo.proxy_routes import Route

__all__ = ["KNOWN_REQUESTS", "BodySink", "Request", "read_simple_request"]


class BodySink(Protocol):
    """Where the rest of a request body goes while it streams (the upstream connection sending it)."""

    def send_body(self, data: bytes) -> None: ...

    def end_body(self) -> None: ...


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
    hsts = b""  # the route's Strict-Transport-Security line, set when routed over TLS only
    body_size = 0
    body_done = False
    error: tuple[int, str, str] | None = None  # answer this instead of proxying
    sink: BodySink | None = None  # upstream currently streaming the body
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
    # until the request ends, for `body` (body_size bytes) is counted in the held bodies' memory.
    held = False
    spool: IO[bytes] | None = None  # a held body past the memory bound: in an unlinked temp file
    spooled = 0  # bytes in `spool`, counted in the budget of held files
    body_started = 0.0  # loop time the body began (moved on by the time reading was paused)
    expect_continue = False
    headers: list[tuple[bytes, bytes]]  # as parsed (set by the parser path only)


# Simple requests already read by the fast path: raw request -> what `read_simple_request` made of
# it. Callers look here first (one dict lookup per request); bounded: cleared when full.
KNOWN_REQUESTS: dict[bytes, tuple[bytes, bytes, bytes, bytes, bool, bool]] = {}


def read_simple_request(data: bytes) -> tuple[bytes, bytes, bytes, bytes, bool, bool] | None:
    """What the request fast path needs of `data`: (method, target, Host, head as sent to the app,
    HTTP/1.1, wants JSON errors); None when it is not exactly one whole GET or HEAD with a single
    Host and no header the proxy acts on (framing, hop-by-hop, forwarding).

    Clients repeat the very same request head (pollers, health checks, API clients): what it means
    is remembered in `KNOWN_REQUESTS`."""
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
    known = method, url, host, b"%s %s HTTP/1.1%s\r\n" % (method, url, block), minor == b"1", accept_json
    if len(data) <= 2048:
        if len(KNOWN_REQUESTS) >= 256:
            KNOWN_REQUESTS.clear()
        KNOWN_REQUESTS[data] = known
    return known
