"""The HTTPS listener's first look at a connection: its ClientHello, read before the handshake.

Python's `ssl` picks a certificate by SNI alone and never shows what the client offered by ALPN.
Two answers need both before the handshake starts: an ACME TLS-ALPN-01 validation (RFC 8737: a
ClientHello offering `acme-tls/1` for a name whose challenge is pending gets the challenge's
self-signed certificate, then the connection closes; the CA's offers nothing else) and a name
lbsolo will never serve (it gets a fatal `unrecognized_name` alert the client actually receives,
then the connection closes; Python's own alert from an SNI callback is dropped unsent when
asyncio closes the transport).

`Hello` is the ClientHello's server name and ALPN offer, `parse_client_hello` reads them from
bytes (pure); `HelloListener` is the listener: it accepts, reads each ClientHello with MSG_PEEK
(nothing consumed: the TLS library then reads it again), asks its `Choose` callback what to do,
and hands the socket to the loop's TLS (`connect_accepted_socket`) on the context chosen, or
writes the alert. It works the same on asyncio's loop and uvloop's. On Linux the listening socket
gets TCP_DEFER_ACCEPT: a connection is accepted once its first bytes are there, so the ClientHello
is usually read at once, with no reader registered per connection.

What it must not do: consume a byte before TLS starts, wait on a client past the handshake
timeout, or spin while a ClientHello trickles in (a partial one is polled on a timer, backing off).
It imports no lbsolo module.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lbsolo.proxy")

__all__ = [
    "ACME_TLS_ALPN",
    "ALERT_UNRECOGNIZED_NAME",
    "Hello",
    "HelloListener",
    "NotTLS",
    "challenge_context",
    "listen_tcp",
    "parse_client_hello",
]

ACME_TLS_ALPN = "acme-tls/1"  # RFC 8737's ALPN protocol
# A fatal unrecognized_name(112) alert as a TLS 1.2 plaintext record: a client that named a host
# lbsolo does not serve reads this instead of an unexplained EOF.
ALERT_UNRECOGNIZED_NAME = b"\x15\x03\x03\x00\x02\x02\x70"
_MAX_HELLO = 16384 + 5  # one record: larger ClientHellos are not looked into (the handshake goes on)
_POLL_FIRST = 0.002  # seconds before a partial ClientHello is looked at again, doubling
_POLL_MAX = 0.1


@dataclass(frozen=True, slots=True)
class Hello:
    server_name: str | None  # the SNI host name, lower case; None when the client sent none
    alpn: tuple[str, ...]  # the ALPN protocols offered, in the client's order


class NotTLS(ValueError):
    """The first bytes are not a TLS handshake record holding a ClientHello."""


def parse_client_hello(data: bytes) -> Hello | None:
    """The server name and ALPN offer of the ClientHello at the start of `data`; None while more
    bytes are needed; NotTLS if `data` cannot be one (or is larger than one record).

    Offsets into `data`, no copies but the two values (it runs once per HTTPS connection)."""
    if len(data) < 5:
        return None
    if data[0] != 0x16 or data[1] != 3:
        raise NotTLS("not a TLS handshake record")
    end = 5 + ((data[3] << 8) | data[4])
    if end > _MAX_HELLO:
        raise NotTLS("record too long")
    if len(data) < end:
        return None
    try:
        if data[5] != 1:
            raise NotTLS("not a ClientHello")
        stop = 9 + int.from_bytes(data[6:9], "big")
        if stop > end:
            raise NotTLS("a ClientHello over several records")
        i = 9 + 2 + 32  # client_version, random
        i += 1 + data[i]  # session id
        i += 2 + ((data[i] << 8) | data[i + 1])  # cipher suites
        i += 1 + data[i]  # compression methods
        if i > stop:
            raise NotTLS("a ClientHello longer than its message")
        name: str | None = None
        alpn: tuple[str, ...] = ()
        if i + 2 > stop:
            return Hello(None, ())  # no extensions at all
        last = min(stop, i + 2 + ((data[i] << 8) | data[i + 1]))
        i += 2
        while i + 4 <= last:
            kind, size = (data[i] << 8) | data[i + 1], (data[i + 2] << 8) | data[i + 3]
            j = i + 4
            i = j + size
            if kind == 0 and size >= 5 and data[j + 2] == 0:  # server_name: a host_name entry
                n = (data[j + 3] << 8) | data[j + 4]
                name = data[j + 5 : min(j + 5 + n, i)].decode("ascii").lower().rstrip(".") or None
            elif kind == 16 and size >= 2:  # application_layer_protocol_negotiation
                protos, k, top = [], j + 2, min(i, j + 2 + ((data[j] << 8) | data[j + 1]))
                while k < top:
                    protos.append(data[k + 1 : k + 1 + data[k]].decode("ascii", "replace"))
                    k += 1 + data[k]
                alpn = tuple(protos)
    except (IndexError, UnicodeDecodeError) as e:
        raise NotTLS(f"a malformed ClientHello: {e}") from e
    return Hello(name, alpn)


def challenge_context(cert_pem: bytes, key_pem: bytes, directory: Path | str | None = None) -> ssl.SSLContext:
    """A server context that answers TLS-ALPN-01 with the challenge certificate: it offers only
    `acme-tls/1` (the validator requires it selected), TLS 1.2 and up."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols([ACME_TLS_ALPN])
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".pem") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(key_pem + cert_pem)
        f.flush()
        ctx.load_cert_chain(f.name)
    return ctx


# What to do with a connection, from its ClientHello (None: not a readable one; the handshake
# decides): a context to start TLS with and whether to close once the handshake is done (a
# challenge answered), or None for the unrecognized_name alert.
Choose = Callable[[Hello | None], "tuple[ssl.SSLContext, bool] | None"]
_ACCEPT_BATCH = 64  # connections accepted per readiness of the listening socket
_ACCEPT_PAUSE = 0.1  # seconds without accepting after running out of descriptors


def listen_tcp(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class _Answered(asyncio.Protocol):
    """A TLS-ALPN-01 validation: the handshake was the answer; close at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class HelloListener:
    """The HTTPS listener: accepts on `sock`, reads each ClientHello (MSG_PEEK), then hands the
    socket to the loop's TLS (`connect_accepted_socket`) on the context `choose` picks, `app()`
    getting the connection once the handshake is done; or writes the alert and closes.

    `timeout` bounds the ClientHello and the handshake together."""

    def __init__(
        self, sock: socket.socket, choose: Choose, app: Callable[[], asyncio.Protocol], timeout: float
    ) -> None:
        self.sock = sock
        self.choose = choose
        self.app = app
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.waiting: set[_Waiting] = set()  # connections whose ClientHello is not read yet
        self.starting: set[asyncio.Task[None]] = set()  # handshakes under way
        self._closed = False
        sock.setblocking(False)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):  # Linux: accepted once the ClientHello is there, read at once
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, max(1, int(timeout)))
        self.loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> list[socket.socket]:
        return [self.sock]

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors (EMFILE, ENFILE, ENOBUFS): pause, then go on
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("proxy: HTTPS accept paused: %s", e)
                    self.loop.remove_reader(self.sock.fileno())
                    self.loop.call_later(_ACCEPT_PAUSE, self._resume)
                return  # ECONNABORTED and the like: that connection is gone
            conn.setblocking(False)
            _Waiting(self, conn).look()

    def _resume(self) -> None:
        if not self._closed:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def start_tls(self, conn: socket.socket, ctx: ssl.SSLContext, answered: bool, deadline: float) -> None:
        task = self.loop.create_task(self._handshake(conn, ctx, answered, deadline))
        self.starting.add(task)
        task.add_done_callback(self.starting.discard)

    async def _handshake(self, conn: socket.socket, ctx: ssl.SSLContext, answered: bool, deadline: float) -> None:
        factory = _Answered if answered else self.app
        left = max(0.1, deadline - self.loop.time())
        try:
            await self.loop.connect_accepted_socket(factory, conn, ssl=ctx, ssl_handshake_timeout=left)
        except Exception:  # a failed handshake: the loop has closed the connection
            if conn.fileno() != -1:
                conn.close()

    def close(self) -> None:
        """Stop accepting. Connections accepted already go on (a restart hands the listening
        socket over: they are this process's to answer)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    async def wait_closed(self) -> None:
        """The end of the proxy's stop: ClientHellos still awaited and handshakes still under way
        are given up."""
        for waiting in list(self.waiting):
            waiting.fail()
        for task in list(self.starting):
            task.cancel()
        if self.starting:
            await asyncio.wait(list(self.starting), timeout=1.0)


class _Waiting:
    """One accepted connection until its ClientHello is read. Its first bytes are waited for by
    readability; the rest of a partial one by a timer, backing off (the bytes already there keep
    the socket readable: waiting by readability would spin)."""

    __slots__ = ("conn", "deadline", "delay", "listener", "reading", "timer")

    def __init__(self, listener: HelloListener, conn: socket.socket) -> None:
        self.listener = listener
        self.conn = conn
        self.deadline = listener.loop.time() + listener.timeout
        self.delay = _POLL_FIRST
        self.reading = False
        self.timer: asyncio.TimerHandle | None = None

    def look(self) -> None:
        self.timer = None
        conn, listener = self.conn, self.listener
        loop = listener.loop
        try:
            data: bytes | None = conn.recv(_MAX_HELLO, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            self.fail()
            return
        if data == b"":  # the client left
            self.fail()
            return
        hello: Hello | None = None
        readable = True
        if data is not None:
            try:
                hello = parse_client_hello(data)
                readable = hello is not None
            except NotTLS:
                hello = None  # not one to read: the handshake fails the usual way
        if data is None or not readable:
            if loop.time() >= self.deadline - 0.01:  # timers may fire a little early
                self.fail()
            elif data is None and not self.reading:
                self.reading = True
                listener.waiting.add(self)
                loop.add_reader(conn.fileno(), self.look)
                self.timer = loop.call_at(self.deadline, self.look)
            elif data is not None:
                self._unwatch()
                listener.waiting.add(self)
                self.timer = loop.call_later(min(self.delay, self.deadline - loop.time()), self.look)
                self.delay = min(_POLL_MAX, self.delay * 2)
            return
        self._unwatch()
        listener.waiting.discard(self)
        choice = listener.choose(hello)
        if choice is None:
            with contextlib.suppress(OSError):
                conn.send(ALERT_UNRECOGNIZED_NAME)
            conn.close()
            return
        listener.start_tls(conn, choice[0], choice[1], self.deadline)

    def _unwatch(self) -> None:
        if self.reading:
            self.reading = False
            with contextlib.suppress(ValueError, OSError):
                self.listener.loop.remove_reader(self.conn.fileno())
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def fail(self) -> None:
        self._unwatch()
        self.listener.waiting.discard(self)
        self.conn.close()
