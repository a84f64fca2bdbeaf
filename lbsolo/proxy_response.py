"""What an app's response head says, and the head the client gets instead: pure functions over bytes.

The upstream side (proxy_upstream) reads a response two ways. The fast path (`KNOWN_HEADS`,
`read_whole_head`) takes a whole response with a Content-Length body in one read and relays it
with one write; the parser path (httptools) calls `read_response_head` on the raw head once it is
parsed, and builds the client's head with `interim_head`, `upgrade_head` or `final_head`. Both
drop the hop-by-hop headers and those the proxy sets itself, and end the head with the request id
and, when the client's HTTP version would assume otherwise, a Connection header.

What it must not do: any I/O, hold state beyond the bounded table of known heads, or import
httptools. The fast path must take exactly the responses the parser path would relay unchanged.
"""

from __future__ import annotations

from lbsolo.proxy_http import (
    _CONN_HEADER,
    _CONN_PLAIN,
    _FINAL_RESPONSE,
    _MAX_HEADERS,
    _PHRASES,
    _RESP_DROPPED,
    _RESP_HOP,
    _BadResponse,
    _cut,
)

__all__ = [
    "KNOWN_HEADS",
    "closing_lines",
    "final_head",
    "interim_head",
    "read_response_head",
    "read_whole_head",
    "upgrade_head",
]

# Response heads already read by the fast path: raw head -> (status, Content-Length, Connection:
# close, the head as sent on without its hop-by-hop lines). Callers look here first; bounded:
# cleared when full.
KNOWN_HEADS: dict[bytes, tuple[int, int, bool, bytes]] = {}


def read_whole_head(data: bytes, end: int) -> tuple[int, int, bool, bytes] | None:
    """What the response fast path needs of a head (`data[:end]`): (status, Content-Length,
    Connection says close, the head to send on without its blank line), remembered in KNOWN_HEADS.

    None when it is not for the fast path: not a valid HTTP/1.1 head with a final status, not
    exactly one Content-Length (digits), a status without a body, or a Transfer-Encoding or Upgrade.
    An app answers with the same head many times over (it changes with the Date, each second).
    """
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
    known = status, int(length), close, b"HTTP/1.1" + line + block
    if end <= 2048:
        if len(KNOWN_HEADS) >= 256:
            KNOWN_HEADS.clear()
        KNOWN_HEADS[data[:end]] = known
    return known


def read_response_head(buf: bytes, status: int) -> tuple[bytes, bytes, bytes | None, bool, bytes | None, bytes | None]:
    """Read a response head just parsed (`buf` holds it raw, and maybe what follows): note the
    framing headers, keep the end-to-end ones.

    Returns (the status line and the kept headers, CRLF-terminated; what follows the head after a
    1xx, the start of the next response, else b""; the Content-Length value, left in the kept
    headers; whether Connection says close; the Transfer-Encoding and Upgrade values), None for
    each absent header.
    """
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        raise _BadResponse("response head without CRLF line ends")
    # After a 1xx the rest is the start of the next response; otherwise it is body: not kept.
    rest = buf[end + 4 :] if status < 200 and status != 101 else b""
    eol = buf.find(b"\r\n", 0, end + 2)
    line = buf[8:eol]  # after "HTTP/1.x": " 200 OK"
    if line.count(b" ") < 2:
        line = b" %d %s" % (status, _PHRASES.get(status, b""))
    block = buf[eol:end]  # "\r\nName: value" per header
    if block.count(b"\r\n") > _MAX_HEADERS:
        raise _BadResponse("too many response headers")
    low = block.lower()
    length = te = upgrade = None
    close = False
    pos = low.find(b"\r\ncontent-length:")
    if pos >= 0:  # left in place: it is kept unless the body is re-framed (see final_head)
        end = low.find(b"\r\n", pos + 2)
        length = block[pos + 17 : end if end >= 0 else len(block)].strip()
    if _RESP_HOP(low) is not None:
        block, close, te, upgrade = _strip_hop(block, low)
    return b"HTTP/1.1" + line + block + b"\r\n", rest, length, close, te, upgrade


def interim_head(first: bytes) -> bytes:
    """A 1xx head to the client (`first`: the status line and kept headers)."""
    return first + b"\r\n"


def upgrade_head(first: bytes, upgrade: bytes) -> bytes:
    """The 101 head to the client, naming the protocol switched to."""
    return first + b"Connection: Upgrade\r\nUpgrade: %s\r\n\r\n" % upgrade


def final_head(
    first: bytes, *, reframed: bool, chunked: bool, request_id: bytes, hsts: bytes, keep: bool, http11: bool
) -> bytes:
    """A final response head to the client. `reframed`: the body is sent otherwise than the app
    framed it (chunked, or up to the close), so the app's Content-Length goes; `chunked`: it is
    sent chunked."""
    if reframed:
        head = first[:-2]
        head, _, _ = _cut(head, head.lower(), b"\r\ncontent-length:")
        first = head + b"\r\n"
    return b"%s%s%s" % (
        first,
        b"Transfer-Encoding: chunked\r\n" if chunked else b"",
        closing_lines(request_id, hsts, keep, http11),
    )


def closing_lines(request_id: bytes, hsts: bytes, keep: bool, http11: bool) -> bytes:
    """The end of a response head towards the client: its request id, the route's HSTS line (over
    TLS; else b""), a Connection header when the client's HTTP version would assume otherwise, and
    the blank line."""
    return b"X-Request-Id: %s\r\n%s%s\r\n" % (request_id, hsts, b"" if keep and http11 else _CONN_HEADER[keep])


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
