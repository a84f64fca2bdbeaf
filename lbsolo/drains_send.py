"""Log drains, the I/O: a syslog connection (TCP, optionally TLS), a logplex HTTPS poster, and
the spill files that hold a drain's oldest messages on disk while its receiver is away.

Each sender's `send` delivers one batch or raises DeliveryError saying why, within its timeout:
a receiver that stalls costs a drain its time, never the caller's. Spill files are written and
read by blocking calls (run them in a worker thread). It must not decide when to send or retry
(core_drains does), nor import the state or the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Protocol

from lbsolo.drains import Kind, Target, frames, logplex_headers, mask_url, unframe
from lbsolo.errors import LbsoloError


class DeliveryError(LbsoloError):
    """A batch was not delivered (the receiver is down, refuses, stalls or answers an error)."""


def tls_context(ca_bundle: str = "") -> ssl.SSLContext:
    """The system's CAs, and `ca_bundle`'s (a PEM file: lbsolo's own CA in tests, a private CA)."""
    ctx = ssl.create_default_context()
    if ca_bundle:
        try:
            ctx.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as e:
            raise LbsoloError(f"cannot read the drains' CA bundle {ca_bundle}: {e}") from e
    return ctx


def _why(e: BaseException) -> str:
    if isinstance(e, socket.gaierror):
        return f"the host does not resolve ({e.strerror or e})"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the receiver's certificate is not trusted ({e.verify_message or e.reason})"
    if isinstance(e, ssl.SSLError):
        return f"TLS: {e.reason or e}"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    return str(e) or type(e).__name__


class Sender(Protocol):
    async def send(self, msgs: list[bytes]) -> None: ...

    async def close(self) -> None: ...


class SyslogSender:
    """One TCP connection (TLS for syslog+tls), opened when needed and again after a failure."""

    def __init__(self, target: Target, timeout: float, tls: ssl.SSLContext | None) -> None:
        self.target = target
        self.timeout = timeout
        self.tls = tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> asyncio.StreamWriter:
        t = self.target
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    t.host, t.port, ssl=self.tls if t.tls else None, server_hostname=t.host if t.tls else None,
                    limit=4096,
                ),
                self.timeout,
            )  # fmt: skip
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise DeliveryError(f"cannot connect to {t.host}:{t.port}: {_why(e)}") from e
        return self._writer

    async def send(self, msgs: list[bytes]) -> None:
        writer = self._writer
        reader = self._reader
        if writer is None or writer.is_closing() or (reader is not None and reader.at_eof()):
            await self.close()
            writer = await self._connect()
        try:
            writer.write(frames(msgs))
            await asyncio.wait_for(writer.drain(), self.timeout)
        except (OSError, TimeoutError, ssl.SSLError) as e:
            await self.close()
            what = "stalled: it took nothing for" if isinstance(e, TimeoutError | asyncio.TimeoutError) else "lost:"
            more = f" {self.timeout:g}s" if what.startswith("stalled") else f" {_why(e)}"
            raise DeliveryError(f"the connection to {self.target.host}:{self.target.port} {what}{more}") from e

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.transport.abort()  # a stalled receiver would hold a graceful close for ever
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)


class LogplexSender:
    """Batches POSTed to an https:// (or loopback http://) URL in Heroku's logplex framing."""

    def __init__(self, url: str, token: str, timeout: float, tls: ssl.SSLContext | None) -> None:
        import httpx  # lazily: only a daemon with an HTTPS drain pays for it

        self.url = url
        self.token = token
        self._httpx = httpx
        self._client = httpx.AsyncClient(
            verify=tls if tls is not None else True,
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            trust_env=False,
        )

    async def send(self, msgs: list[bytes]) -> None:
        headers = logplex_headers(self.token, len(msgs), secrets.token_hex(16))
        try:
            answer = await self._client.post(self.url, content=frames(msgs), headers=headers)
            await answer.aclose()
        except self._httpx.HTTPError as e:
            cause = e.__cause__ or e.__context__ or e
            why = (
                _why(cause)
                if isinstance(cause, OSError | ssl.SSLError | TimeoutError)
                else (str(e) or type(e).__name__)
            )
            if isinstance(e, self._httpx.TimeoutException):
                why = "timed out"
            raise DeliveryError(f"POST to {mask_url(self.url)} failed: {why}") from e
        if not 200 <= answer.status_code < 300:
            raise DeliveryError(f"POST to {mask_url(self.url)} answered {answer.status_code} {answer.reason_phrase}")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


def sender_for(url: str, target: Target, token: str, timeout: float, tls: ssl.SSLContext | None) -> Sender:
    if target.kind in (Kind.HTTPS, Kind.HTTP):
        return LogplexSender(url, token, timeout, tls)
    return SyslogSender(target, timeout, tls)


def _locked(method: Any) -> Any:
    def call(self: Spill, *args: Any) -> Any:
        with self._lock:
            return method(self, *args)

    call.__doc__ = method.__doc__
    return call


class Spill:
    """A drain's oldest messages on disk: numbered segment files of octet-counted messages in
    `directory`, at most `max_bytes` in all (the oldest segment dropped, and counted, past it).
    Blocking: call from a worker thread."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.dropped = 0
        self.segments: list[tuple[int, int, int]] = []  # (number, bytes, messages), oldest first
        self._next = 0
        self._lock = threading.Lock()  # the spill task writes while the sender reads and removes

    @_locked
    def load(self) -> Spill:
        """Find the segments a previous daemon left (it writes its buffer here when it stops)."""
        found = []
        if self.directory.is_dir():
            for p in self.directory.glob("*.seg"):
                with contextlib.suppress(ValueError, OSError):
                    data = p.read_bytes()
                    found.append((int(p.stem), len(data), len(unframe(data)[0])))
        self.segments = sorted(found)
        self._next = self.segments[-1][0] + 1 if self.segments else 0
        return self

    @property
    def bytes(self) -> int:
        return sum(s[1] for s in self.segments)

    @property
    def messages(self) -> int:
        return sum(s[2] for s in self.segments)

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:08d}.seg"

    @_locked
    def write(self, msgs: list[bytes]) -> None:
        """Add a segment; the oldest go past max_bytes. A failed write (a full disk) drops `msgs`."""
        data = frames(msgs)
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self._path(self._next)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        except OSError:
            self.dropped += len(msgs)
            return
        self.segments.append((self._next, len(data), len(msgs)))
        self._next += 1
        while self.bytes > self.max_bytes and self.segments:
            self.drop_oldest()

    def drop_oldest(self) -> None:
        number, _, count = self.segments.pop(0)
        self._path(number).unlink(missing_ok=True)
        self.dropped += count

    @_locked
    def read_oldest(self) -> tuple[int, list[bytes]] | None:
        while self.segments:
            number = self.segments[0][0]
            try:
                msgs, _ = unframe(self._path(number).read_bytes())
                return number, msgs
            except (OSError, ValueError):
                self.drop_oldest()  # gone or damaged: its messages are lost, and counted
        return None

    @_locked
    def remove(self, number: int) -> None:
        self.segments = [s for s in self.segments if s[0] != number]
        self._path(number).unlink(missing_ok=True)

    @_locked
    def clear(self) -> None:
        for number, _, _ in self.segments:
            self._path(number).unlink(missing_ok=True)
        self.segments = []
        with contextlib.suppress(OSError):
            self.directory.rmdir()


def describe(e: Any) -> str:
    return e.message if isinstance(e, LbsoloError) else _why(e)
