"""The proxy tests' harness: a small HTTP/1.1 upstream app, a raw client, a proxy in front of it."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from lbsolo.proxy import ProxyServer, Route, Target

DOMAIN = "lbsolo.localhost"


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class App:
    """A small HTTP/1.1 server with a few behaviours picked by path."""

    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    sent: int = 0  # body bytes of /big responses handed to the socket
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> App:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        served = 0
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ")
                headers = []
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = h.decode("latin-1").partition(":")
                    headers.append((name.strip(), value.strip()))
                lower = {k.lower(): v for k, v in headers}
                if "/die-on-reuse" in target and served > 0:
                    break  # like an app whose keep-alive timeout just fired
                if target == "/stall":
                    self.seen.append(Seen(method, target, headers, b""))
                    await asyncio.sleep(30)  # never reads the body
                if lower.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                if lower.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int((await reader.readline()).split(b";")[0], 16)
                        if size == 0:
                            while (await reader.readline()) not in (b"\r\n", b""):
                                pass
                            break
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                else:
                    body = await reader.readexactly(int(lower.get("content-length", "0")))
                self.seen.append(Seen(method, target, headers, body))
                served += 1
                keep = await self._respond(method, target, lower, body, reader, writer)
                if not keep or lower.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _respond(self, method, target, headers, body, reader, writer) -> bool:
        path, _, query = target.partition("?")
        if path == "/big":
            size = int(query)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            if method != "HEAD":
                block = bytes(range(256)) * 256
                sent = 0
                while sent < size:
                    piece = block[: size - sent]
                    writer.write(piece)
                    sent += len(piece)
                    self.sent += len(piece)
                    await writer.drain()
            await writer.drain()
            return True
        if path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-App: chunky\r\n\r\n")
            for part in (b"hello ", b"chunked ", b"world"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\nX-Trailer: t\r\n\r\n")
            await writer.drain()
            return True
        if path == "/eof":
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the ")
            await writer.drain()
            writer.write(b"connection closes")
            await writer.drain()
            return False
        if path == "/slow":
            await asyncio.sleep(float(query))
        if path == "/garbage":
            writer.write(b"this is not HTTP\r\n\r\n")
            await writer.drain()
            return False
        if path == "/hangup":
            return False
        if path == "/nocontent":
            writer.write(b"HTTP/1.1 204 No Content\r\nX-App: yes\r\n\r\n")
            await writer.drain()
            return True
        if path == "/ws":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data.upper())
                await writer.drain()
            return False
        if path == "/hop":
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Internal\r\n"
                b"X-Internal: secret\r\nKeep-Alive: timeout=5\r\nX-Public: yes\r\n\r\nok"
            )
            await writer.drain()
            return True
        doc = {
            "method": method,
            "target": target,
            "body_len": len(body),
            "body_sha": hashlib.sha256(body).hexdigest(),
        }
        payload = json.dumps(doc).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload))
        if method != "HEAD":
            writer.write(payload)
        await writer.drain()
        return True


@dataclass
class Resp:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    def json(self):
        return json.loads(self.body)


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Resp:
    line = await reader.readline()
    assert line, "connection closed before a response"
    _version, status, reason = line.decode().rstrip("\r\n").split(" ", 2)
    headers = []
    while (h := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = h.decode().partition(":")
        headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    code = int(status)
    if method == "HEAD" or code in (204, 304) or code < 200:
        body = b""
    elif lower.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                assert await reader.readline() == b"\r\n"
                break
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
    elif "content-length" in lower:
        body = await reader.readexactly(int(lower["content-length"]))
    else:
        body = await reader.read()
    return Resp(code, reason, headers, body)


class Conn:
    """One raw client connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        host: str | None = "hello.lbsolo.localhost",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        version: str = "1.1",
    ) -> Resp:
        lines = [f"{method} {path} HTTP/{version}"]
        if host is not None:
            lines.append(f"Host: {host}")
        for k, v in (headers or {}).items():
            lines.append(f"{k}: {v}")
        if body and "Transfer-Encoding" not in (headers or {}):
            lines.append(f"Content-Length: {len(body)}")
        await self.send(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return await read_response(self.reader, method)

    async def at_eof(self, timeout: float = 2.0) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        if self.writer.transport.get_write_buffer_size():
            self.writer.transport.abort()  # the proxy is not reading: do not wait for a flush
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def stack(request_buffering: bool = True, **proxy_kw) -> AsyncIterator[tuple[ProxyServer, App]]:
    app = await App().start()
    proxy = ProxyServer(port=0, domain=DOMAIN, **proxy_kw)
    target = Target("127.0.0.1", app.port)
    proxy.set_routes(
        {"hello": Route(app="hello", release="v1", targets=(target,), request_buffering=request_buffering)}
    )
    await proxy.start()
    try:
        yield proxy, app
    finally:
        await proxy.stop(timeout=1.0)
        await app.close()


async def closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port
