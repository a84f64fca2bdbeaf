"""lbsolo.cli.client_wire fed bytes on a socket pair: the request it sends (bytes, chunked
uploads), and answers by Content-Length, chunked, or to the end, cut anywhere, read whole or by
line; an early refusal of an upload is still read; a broken answer is a WireError."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from lbsolo.cli.client_wire import Response, WireError, exchange


def served(answer: bytes, pieces: int = 1, read_all: bool = True) -> tuple[socket.socket, list[bytes]]:
    """The client's end of a socket pair whose other end reads the request, then sends `answer`
    in `pieces` writes (cut anywhere)."""
    client, server = socket.socketpair()
    seen: list[bytes] = []

    def serve() -> None:
        with server:
            data = b""
            while read_all and not _whole(data):
                chunk = server.recv(65536)
                if not chunk:
                    break
                data += chunk
            seen.append(data)
            step = max(1, len(answer) // pieces)
            try:
                for at in range(0, len(answer), step):
                    server.sendall(answer[at : at + step])
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client may close once it has what it needs (a chunked answer's trailers unread)

    threading.Thread(target=serve, daemon=True).start()
    return client, seen


def _whole(request: bytes) -> bool:
    head, sep, body = request.partition(b"\r\n\r\n")
    if not sep:
        return False
    if b"Transfer-Encoding: chunked" in head:
        return body.endswith(b"0\r\n\r\n")
    length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.startswith(b"Content-Length:")), 0)
    return len(body) >= length


@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_an_answer_by_content_length(pieces):
    sock, seen = served(b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-A: b\r\n\r\n{"a":1}trailing junk', pieces)
    with sock:
        response = exchange(sock, "GET", "/api/apps", {"Authorization": "Bearer t"}, None)
        assert (response.status, response.headers["x-a"], response.read()) == (200, "b", b'{"a":1}')
    assert (
        seen[0] == b"GET /api/apps HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer t\r\n\r\n"
    )


@pytest.mark.parametrize("pieces", [1, 4, 1000])
def test_a_chunked_answer_line_by_line(pieces):
    body = b'{"line": "one"}\n{"li' + b'ne": "two"}\n{"result": {}}'
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in (body[:7], body[7:30], body[30:]))
    sock, _ = served(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-T: 1\r\n\r\n", pieces)
    with sock:
        response = exchange(sock, "POST", "/api/apps/a/run", {}, b"{}")
        lines = list(iter(response.readline, b""))
    assert lines == [b'{"line": "one"}\n', b'{"line": "two"}\n', b'{"result": {}}']


def test_an_answer_to_the_end_after_an_interim_one():
    sock, _ = served(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\nno such app")
    with sock:
        response = exchange(sock, "GET", "/api/apps/x", {}, None)
        assert (response.status, response.read()) == (404, b"no such app")


def test_an_upload_goes_chunked_as_it_is_read():
    def pieces() -> Iterator[bytes]:
        yield b"tar"
        yield b""
        yield b"ball!"

    sock, seen = served(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with sock:
        assert exchange(sock, "POST", "/d", {"Transfer-Encoding": "chunked"}, pieces()).read() == b""
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert head.count(b"Transfer-Encoding: chunked") == 1 and body == b"3\r\ntar\r\n5\r\nball!\r\n0\r\n\r\n"


def test_a_refused_upload_still_gets_its_answer():
    def endless() -> Iterator[bytes]:
        while True:
            yield b"x" * 65536

    refusal = b"HTTP/1.1 413 Too Large\r\nContent-Length: 9\r\n\r\ntoo large"
    sock, _ = served(refusal, read_all=False)  # answers and closes without reading
    with sock:
        response = exchange(sock, "POST", "/d", {}, endless())
        assert (response.status, response.read()) == (413, b"too large")


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000 + b"\r\n\r\n",
    ],
)
def test_a_broken_answer_is_a_wire_error(answer):
    sock, _ = served(answer)
    with sock, pytest.raises(WireError):
        exchange(sock, "GET", "/", {}, None).read()


def test_a_response_reads_only_its_own_body():
    sock, _ = served(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokMORE")
    with sock:
        response = Response(socket_sent(sock))
        assert response.read() == b"ok" and response.read() == b""


def socket_sent(sock: socket.socket) -> socket.socket:
    sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
    return sock
