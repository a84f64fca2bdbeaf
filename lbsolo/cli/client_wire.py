"""One HTTP/1.1 exchange over a socket, as much of the protocol as the CLI's API client uses.

A request (a body of bytes, or an upload sent chunked as it is read), then the answer's status,
headers and body (by Content-Length, chunked, or to the end), whole or line by line. The daemon
is local and lbsolo's own; this replaces http.client, whose import (with email and ssl) was a
tenth of every verb's start. It knows nothing of the API (paths, tokens, JSON: lbsolo.cli.client)
and speaks only plain HTTP to one host; a connection carries one exchange, then closes.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Iterator

MAX_HEAD = 64 * 1024  # a status line and headers longer than this are not the daemon's


class WireError(OSError):
    """The other side broke the protocol (or the connection, mid-answer)."""


def connect(*, unix_path: str = "", host: str = "", port: int = 0, timeout: float | None) -> socket.socket:
    """A connected socket: the unix socket at unix_path if given, else TCP to host:port."""
    if not unix_path:
        return socket.create_connection((host, port), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(unix_path)
    except OSError:
        sock.close()
        raise
    return sock


class Response:
    """The answer on a socket: status and headers read at once, the body as it is asked for."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")
        self.status, self.headers = self._head()
        while 100 <= self.status < 200:  # an interim answer: the real one follows
            self.status, self.headers = self._head()
        coding = self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        self._chunked = "chunked" in coding
        self._left = None if self._chunked or length is None else _length(length)
        self._buffer = b""
        self._done = False

    def _head(self) -> tuple[int, dict[str, str]]:
        line = self._file.readline(MAX_HEAD)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise WireError(f"not an HTTP answer: {line[:80]!r}")
        headers: dict[str, str] = {}
        size = len(line)
        while (line := self._file.readline(MAX_HEAD)) not in (b"\r\n", b"\n"):
            size += len(line)
            if not line or size > MAX_HEAD:
                raise WireError("the answer's headers were cut off or too long")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _more(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self._done:
            return b""
        if self._chunked:
            size_line = self._file.readline(MAX_HEAD)
            if not size_line:
                raise WireError("the answer ended inside a chunk")
            size = _length(size_line.split(b";", 1)[0].strip(), base=16)
            if size == 0:
                while self._file.readline(MAX_HEAD) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self._done = True
                return b""
            data = self._file.read(size)
            if len(data) < size or self._file.readline(MAX_HEAD) not in (b"\r\n", b"\n"):
                raise WireError("the answer ended inside a chunk")
            return data
        if self._left is None:
            data = self._file.read1(65536)
            self._done = not data
            return data
        if self._left == 0:
            self._done = True
            return b""
        data = self._file.read1(min(self._left, 65536))
        if not data:
            raise WireError(f"the answer ended {self._left} bytes short")
        self._left -= len(data)
        return data

    def read(self) -> bytes:
        """The rest of the body."""
        pieces = [self._buffer]
        self._buffer = b""
        while piece := self._more():
            pieces.append(piece)
        return b"".join(pieces)

    def pieces(self) -> Iterator[bytes]:
        """The rest of the body, piece by piece as it arrives (a large body, never held whole)."""
        if self._buffer:
            piece, self._buffer = self._buffer, b""
            yield piece
        while piece := self._more():
            yield piece

    def readline(self) -> bytes:
        """The body's next line, with its newline (the last may lack it); b"" at the end."""
        while b"\n" not in self._buffer:
            piece = self._more()
            if not piece:
                line, self._buffer = self._buffer, b""
                return line
            self._buffer += piece
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        self._file.close()


def exchange(
    sock: socket.socket,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes | Iterable[bytes] | None,
    host: str = "localhost",
) -> Response:
    """Send one request on sock and read the head of its answer.

    An iterable body goes chunked, piece by piece. If the daemon answers before taking the whole
    body (a refused upload), that answer is still read and returned.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    if isinstance(body, bytes):
        lines.append(f"Content-Length: {len(body)}")
    elif body is not None:
        lines.append("Transfer-Encoding: chunked")
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "transfer-encoding"]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        if body is None or isinstance(body, bytes):
            sock.sendall(head + (body or b""))
        else:
            sock.sendall(head)
            for piece in body:
                if piece:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError) as e:
        try:
            return Response(sock)  # it may have said why it stopped reading
        except OSError:
            raise e from None
    return Response(sock)


def _length(raw: str | bytes, base: int = 10) -> int:
    try:
        value = int(raw, base)
    except ValueError:
        raise WireError(f"not a length: {raw!r}") from None
    if value < 0:
        raise WireError(f"not a length: {raw!r}")
    return value
