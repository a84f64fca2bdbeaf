"""HTTP/1.1 pieces shared by the proxy's client and upstream sides: limits, header sets, error pages.

No I/O and no state: constants and small pure functions.
"""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from http import HTTPStatus

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
# Headers that say who the client is and how it came. A client could forge them: they are passed on
# (or, for X-Forwarded-For, extended) only from a trusted proxy; any other X-Forwarded-* is dropped too.
_REQ_FORWARDING = frozenset({b"forwarded", b"x-real-ip", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})
_X_FORWARDED = b"x-forwarded-"
# Request headers never forwarded as sent: hop-by-hop ones and those the proxy sets itself.
_REQ_DROP = _HOP_BY_HOP | _REQ_FORWARDING | {b"x-request-id"}
# Request headers looked at while copying; of those, the ones copied as they are.
_REQ_COPIED = frozenset({b"host", b"content-length", b"accept", b"expect"})
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
    rb"|expect|x-forwarded-[^:\r\n]*|forwarded|x-real-ip|x-request-id):"
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


def request_ids(prefix: bytes | None = None) -> Iterator[bytes]:
    """The proxy's request ids, minted here only: unique per process and cheap (`next(ids)` runs no
    Python code): a prefix chosen at start (random unless given) and a counter."""
    if prefix is None:
        prefix = os.urandom(6).hex().encode()
    return map((prefix.replace(b"%", b"%%") + b"%08x").__mod__, itertools.count(1))


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


_REFUSED_BODY = b"too many connections; retry later\n"
REFUSED_CONNECTION = (  # the answer to a connection past a cap, before anything is read
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\n%s" % (len(_REFUSED_BODY), _REFUSED_BODY)
)


def _render_error(status: int, code: str, message: str, as_json: bool, reload: int = 0) -> tuple[bytes, bytes]:
    """An error page: JSON for clients that ask for it, else a plain HTML page that names nothing
    on this server (the web UI lists the apps to those signed in); `reload`: the page asks again
    after that many seconds."""
    if as_json:
        doc = {"error": {"code": code, "message": message}}
        return json.dumps(doc).encode(), b"application/json"
    title = html.escape(f"{status} {HTTPStatus(status).phrase}")
    again = f'<meta http-equiv="refresh" content="{reload}">' if reload else ""
    page = (
        f'<!doctype html>\n<html><head><meta charset="utf-8">{again}<title>{title}</title></head>\n'
        f"<body><h1>{title}</h1>\n<p>{html.escape(message)}</p>\n<hr><p><small>lbsolo</small></p></body></html>\n"
    )
    return page.encode(), b"text/html; charset=utf-8"


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    as_json: bool,
    request_id: bytes,
    keep: bool,
    http11: bool,
    head_only: bool,
    hsts: bytes = b"",
    retry_after: int = 0,
) -> bytes:
    """A whole error response from the proxy itself (`head_only`: to a HEAD, without its page;
    `hsts`: the routed app's Strict-Transport-Security line, over TLS; `retry_after`: a
    Retry-After header, and a page that reloads itself then)."""
    body, ctype = _render_error(status, code, message, as_json, retry_after)
    parts = [
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n"
        b"X-Request-Id: %s\r\n%s" % (status, _PHRASES[status], ctype, len(body), request_id, hsts)
    ]
    if retry_after:
        parts.append(b"Retry-After: %d\r\n" % retry_after)
    if not keep:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


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


def _origin_form(target: bytes) -> tuple[bytes, bytes] | None:
    """(authority, origin-form path) of an absolute-form request target such as `http://host/p?q`;
    None when it is not an http(s) URL with a plain host[:port] authority."""
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        return None
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        pos = rest.find(stop)
        if 0 <= pos < end:
            end = pos
    authority, path = rest[:end], rest[end:]
    if not authority or b"@" in authority:
        return None
    if not path.startswith(b"/"):
        path = b"/" + path
    return authority, path


# HTTP-01 challenges (ACME) are answered by the proxy itself, for any host it routes, never by an app.
ACME_CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"


def _acme_answer(key_authorization: bytes, request_id: bytes, keep: bool, http11: bool, head_only: bool) -> bytes:
    """A complete 200 response carrying an HTTP-01 key authorization (RFC 8555, section 8.3)."""
    parts = [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-store\r\nX-Request-Id: %s\r\n" % (len(key_authorization), request_id)
    ]
    if not keep:
        parts.append(b"Connection: close\r\n")
    elif not http11:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(key_authorization)
    return b"".join(parts)


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
