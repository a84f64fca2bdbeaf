"""Hostile and unusual clients over real sockets: bad requests, smuggling, slowloris, limits, WebSockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
import time

import pytest

from lbsolo.proxy import Route, Target
from tests.unit.proxy_harness import Conn, read_response, stack

HOST = b"Host: hello.lbsolo.localhost\r\n"


async def _expect_status_and_close(c: Conn, status: int) -> None:
    r = await read_response(c.reader)
    assert r.status == status, r
    assert r.header("Connection") == "close"
    assert await c.at_eof()


async def _still_serving(port: int) -> None:
    c = await Conn.open(port)
    assert (await c.request(path="/ok")).status == 200
    await c.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\n" + HOST + b"\r\n",
        b"G ET / HTTP/1.1\r\n" + HOST + b"\r\n",
        b"GET /a b HTTP/1.1\r\n" + HOST + b"\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-Bad\x01Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"X-Bad: v\x00v\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"Bad Name: v\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + HOST + b"NoColon\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ],
    ids=[
        "no-target",
        "version",
        "method",
        "space-in-target",
        "ctl-name",
        "nul-value",
        "space-name",
        "no-colon",
        "binary",
    ],
)
def test_malformed_requests_get_400_and_close(run, raw):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            await c.send(raw)
            await _expect_status_and_close(c, 400)
            await c.close()
            assert app.seen == []
            await _still_serving(proxy.port)

    run(scenario)


def test_too_many_or_too_large_headers_get_431(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            many = b"".join(b"X-H%d: v\r\n" % i for i in range(200))
            await c.send(b"GET / HTTP/1.1\r\n" + HOST + many + b"\r\n")
            await _expect_status_and_close(c, 431)
            await c.close()
            c = await Conn.open(proxy.port)
            await c.send(b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n")
            await _expect_status_and_close(c, 431)
            await c.close()
            assert app.seen == []
            await _still_serving(proxy.port)

    run(scenario)


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        b"Transfer-Encoding: gzip\r\n",
        b"Transfer-Encoding: chunked, identity\r\n",
        b"Content-Length: 5\r\nContent-Length: 6\r\n",
        b"Content-Length: -5\r\n",
        b"Transfer-Encoding : chunked\r\n",
    ],
    ids=["cl-te", "te-cl", "te-gzip", "te-not-last", "cl-twice", "cl-negative", "te-space"],
)
def test_ambiguous_body_framing_is_refused_to_prevent_smuggling(run, headers):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            smuggled = b"GET /smuggled HTTP/1.1\r\n" + HOST + b"\r\n"
            await c.send(b"POST /front HTTP/1.1\r\n" + HOST + headers + b"\r\n0\r\n\r\n" + smuggled)
            await _expect_status_and_close(c, 400)
            await c.close()
            assert [s.target for s in app.seen] == []
            await _still_serving(proxy.port)

    run(scenario)


def test_slowloris_gets_408_and_other_clients_are_served_meanwhile(run):
    async def scenario():
        async with stack(header_timeout=0.3) as (proxy, _app):
            slow = await Conn.open(proxy.port)
            await slow.send(b"GET / HTTP/1.1\r\n")
            for _ in range(3):  # trickles a byte at a time
                await asyncio.sleep(0.05)
                await slow.send(b"X")
            await _still_serving(proxy.port)
            started = time.monotonic()
            await _expect_status_and_close(slow, 408)
            assert time.monotonic() - started < 1.5
            await slow.close()

            # A slow body (headers complete, body never finishes) times out too.
            async with stack(header_timeout=0.3, read_timeout=0.3) as (proxy2, _app2):
                c = await Conn.open(proxy2.port)
                await c.send(b"POST /x HTTP/1.1\r\n" + HOST + b"Content-Length: 100\r\n\r\nabc")
                r = await read_response(c.reader)
                assert r.status in (408, 504)  # the proxy's or the app's wait expires first
                await c.close()

    run(scenario)


def test_body_larger_than_the_route_limit_gets_413(run):
    async def scenario():
        async with stack() as (proxy, app):
            proxy.set_routes({"hello": Route(app="hello", targets=(Target("127.0.0.1", app.port),), max_body=1000)})
            c = await Conn.open(proxy.port)
            assert (await c.request("POST", path="/fits", body=b"x" * 1000)).status == 200
            r = await c.request("POST", path="/declared", body=b"x" * 1001)
            assert r.status == 413 and r.header("Connection") == "close"
            await c.close()

            c = await Conn.open(proxy.port)  # chunked: found out while streaming
            await c.send(b"POST /chunked HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n")
            for _ in range(3):
                await c.send(b"190\r\n" + b"y" * 400 + b"\r\n")
            r = await read_response(c.reader)
            assert r.status in (413, 502)  # 502 only if the app answered first; never a 200
            await c.close()
            assert [s.target for s in app.seen] == ["/fits"]
            await _still_serving(proxy.port)

    run(scenario)


# ---------------------------------------------------------------------------------------------
# WebSocket echo through the proxy

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else b""
    payload = await reader.readexactly(length)
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


def _frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    head = bytes([0x80 | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    head += bytes([bit | length]) if length < 126 else bytes([bit | 126]) + struct.pack("!H", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class EchoServer:
    """A minimal RFC 6455 server: handshake, then echoes text frames until a close frame or EOF."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()
        self.port = 0

    async def start(self) -> EchoServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            assert headers[b"upgrade"].lower() == b"websocket"
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + _accept(headers[b"sec-websocket-key"]) + b"\r\n\r\n"
            )
            while True:
                opcode, payload = await _read_frame(reader)
                if opcode == 8:
                    writer.write(_frame(8, payload, mask=False))
                    break
                writer.write(_frame(opcode, payload, mask=False))
                await writer.drain()
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def test_websocket_echo_through_the_proxy_and_clean_close(run):
    async def scenario():
        async with stack() as (proxy, _app):
            echo = await EchoServer().start()
            try:
                proxy.set_routes({"ws": Route(app="ws", targets=(Target("127.0.0.1", echo.port),))})
                key = base64.b64encode(os.urandom(16))
                c = await Conn.open(proxy.port)
                await c.send(
                    b"GET /chat HTTP/1.1\r\nHost: ws.lbsolo.localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
                )
                r = await read_response(c.reader)
                assert r.status == 101
                assert r.header("Sec-WebSocket-Accept") == _accept(key).decode()
                assert r.header("Upgrade").lower() == "websocket"
                for text in (b"hello through lbsolo", "ünïcode".encode() * 40):
                    await c.send(_frame(1, text, mask=True))
                    assert await _read_frame(c.reader) == (1, text)
                assert proxy.in_flight(Target("127.0.0.1", echo.port)) == 1  # a tunnel counts for drain
                await c.send(_frame(8, b"\x03\xe8", mask=True))
                assert await _read_frame(c.reader) == (8, b"\x03\xe8")
                assert await c.at_eof()  # the app closed: the tunnel closes the client side
                await asyncio.wait_for(echo.closed.wait(), 2)
                await c.close()
                for _ in range(50):
                    if not proxy.in_flight(Target("127.0.0.1", echo.port)):
                        break
                    await asyncio.sleep(0.01)
                assert proxy.in_flight(Target("127.0.0.1", echo.port)) == 0

                # The client leaving closes the app's side too.
                c = await Conn.open(proxy.port)
                echo.closed.clear()
                await c.send(
                    b"GET /chat HTTP/1.1\r\nHost: ws.lbsolo.localhost\r\nUpgrade: websocket\r\n"
                    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
                )
                assert (await read_response(c.reader)).status == 101
                await c.close()
                await asyncio.wait_for(echo.closed.wait(), 2)
            finally:
                await echo.close()

    run(scenario)
