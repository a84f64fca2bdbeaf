"""HTTP/1.1 pieces shared by the proxy's client and upstream sides: limits, header sets, error pages.

No I/O and no state: constants and small pure functions.
"""

from __future__ import annotations

import html
import json
import re
import time
from http import HTTPStatus

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
# Header lines as RFC 9110 allows them: a token name, a value without control bytes, CRLF line ends
# and no obsolete line folding. The fast paths accept a head only when all of it matches; anything
# else goes through httptools, which answers or rejects it.
_HEADER_LINES = rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*)*"
# A whole bodiless request, the most common kind: GET or HEAD of an origin-form target.
_SIMPLE_REQUEST = re.compile(rb"(GET|HEAD) (/[\x21-\x7e]*) HTTP/1\.([01])(" + _HEADER_LINES + rb")\r\n\r\n").fullmatch
# Request headers that need the parser's path (framing, hop-by-hop, or set or checked by the proxy).
_NOT_SIMPLE = re.compile(
    rb"\r\n(?:connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|upgrade|content-length"
    rb"|expect|x-forwarded-for|x-forwarded-proto|x-forwarded-host|x-request-id):"
).search
# An HTTP/1.1 response head with a final status.
_FINAL_RESPONSE = re.compile(
    rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?" + _HEADER_LINES + rb"\r\n\r\n"
).match
# Response headers dropped without a look (the framing ones are handled one by one).
_RESP_DROPPED = tuple(
    b"\r\n" + name + b":" for name in (b"keep-alive", b"proxy-connection", b"te", b"trailer", b"x-request-id")
)
# Any response header that is hop-by-hop or set by the proxy (searched in the lower-cased head block).
_RESP_HOP = re.compile(
    rb"\r\n(?:connection|transfer-encoding|upgrade|keep-alive|proxy-connection|te|trailer|x-request-id):"
).search
# Connection header towards the client, by keep-alive, when its HTTP version assumes otherwise.
_CONN_HEADER = (b"Connection: close\r\n", b"Connection: keep-alive\r\n")
_CONN_PLAIN = frozenset({b"close", b"keep-alive", b"upgrade", b"content-length", b""})

_MAX_HEAD_BYTES = 64 * 1024  # request line/status + headers
_MAX_HEADERS = 128
# Request timing for metrics: uvloop's loop.time() is cached per iteration at millisecond resolution.
_now = time.monotonic

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


def _https_redirect(host: str, target: bytes, https_port: int, request_id: bytes, keep: bool, http11: bool) -> bytes:
    """A complete 308 response sending a plain-HTTP request to the same host and path over HTTPS.

    `host` is the normalized Host (no port); the port is written unless it is 443; the request target
    keeps its query. An absolute-form target (`http://host/path`) keeps only its path. 308 rather than
    301: clients repeat the method and body, so a POST is not turned into a GET.
    """
    if not target.startswith(b"/"):
        _, sep, rest = target.partition(b"://")
        slash = rest.find(b"/") if sep else -1
        target = rest[slash:] if slash >= 0 else b"/"
    port = b"" if https_port == 443 else b":%d" % https_port
    parts = [
        b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://%s%s%s\r\nContent-Length: 0\r\n"
        b"X-Request-Id: %s\r\n" % (host.encode("latin-1"), port, target, request_id)
    ]
    if not keep:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
