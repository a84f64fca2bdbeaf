"""Slow clients cost the apps nothing: request bodies are read whole before an upstream is taken.

Issue 11, item 3: ~1,000 connections trickling request bodies held every worker of a threaded app
(the proxy streamed bodies as they came), a body timeout reset by each chunk let a client hold a
connection for ever, nothing capped connections per client or in all, and tunnels never timed out.
The app here is a real threaded HTTP server with a fixed number of workers, as gunicorn's gthread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from lbsolo.proxy import ProxyServer, Route, Target
from tests.unit.proxy_harness import App, Conn, read_response

HOST = b"Host: shop.lbsolo.localhost\r\n"


class ThreadedApp:
    """An HTTP/1.1 app server with `workers` threads, each serving one connection at a time to its end.

    `heads` counts request heads read: a worker reads the head, then the whole body, then answers.
    """

    def __init__(self, workers: int = 4) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.sock.getsockname()[1]
        self.heads = 0
        self.bodies: list[int] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError, ValueError):
                conn.settimeout(120)
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        data = b""
        while True:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, data = data.partition(b"\r\n\r\n")
            with self._lock:
                self.heads += 1
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(data) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            body, data = data[:length], data[length:]
            with self._lock:
                self.bodies.append(len(body))
            answer = b"%d" % len(body)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the workers blocked in accept()
        self.sock.close()


@contextlib.contextmanager
def threaded_app(workers: int = 4) -> Iterator[ThreadedApp]:
    app = ThreadedApp(workers)
    try:
        yield app
    finally:
        app.close()


@contextlib.asynccontextmanager
async def proxy_for(port: int, request_buffering: bool = True, **kw: object) -> AsyncIterator[ProxyServer]:
    proxy = ProxyServer(port=0, domain="lbsolo.localhost", **kw)  # type: ignore[arg-type]
    route = Route(app="shop", release="v1", targets=(Target("127.0.0.1", port),), request_buffering=request_buffering)
    proxy.set_routes({"shop": route})
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop(timeout=0.5)


async def open_from(source: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


def held_spools(directory: str) -> list[str]:
    """This process's open files in `directory` (the proxy's temp files are unlinked: '(deleted)')."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(directory):
                found.append(target)
    return found


def test_a_body_is_read_whole_before_the_app_sees_the_request(run):
    async def scenario() -> None:
        with threaded_app() as app:
            async with proxy_for(app.port) as proxy:
                c = await Conn.open(proxy.port)
                await c.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nhello")
                await asyncio.sleep(0.3)
                assert app.heads == 0  # half a body: no app connection, no worker taken
                await c.send(b"world")
                r = await read_response(c.reader)
                assert (r.status, r.body, app.heads) == (200, b"10", 1)
                await c.close()

    run(scenario)


def test_with_buffering_off_the_body_streams_to_the_app(run):
    async def scenario() -> None:
        with threaded_app() as app:
            async with proxy_for(app.port, request_buffering=False) as proxy:
                c = await Conn.open(proxy.port)
                await c.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nhello")
                for _ in range(50):
                    await asyncio.sleep(0.02)
                    if app.heads:
                        break
                assert app.heads == 1  # the app has the head (and a worker) before the body is all here
                await c.send(b"world")
                assert (await read_response(c.reader)).body == b"10"
                await c.close()

    run(scenario)


def test_bodies_held_in_memory_are_counted_while_held_and_released_however_they_end(run):
    async def scenario() -> None:
        with threaded_app() as app:
            async with proxy_for(app.port) as proxy:
                c = await Conn.open(proxy.port)
                await c.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nhello")
                await asyncio.sleep(0.05)
                assert proxy.bodies.held == 5 and app.heads == 0
                await c.send(b"world")
                assert (await read_response(c.reader)).body == b"10"
                assert proxy.bodies.held == 0  # answered: released
                await c.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Content-Length: 10\r\n\r\nhel")
                await asyncio.sleep(0.05)
                assert proxy.bodies.held == 3
                await c.close()  # the client goes away mid-body
                await asyncio.sleep(0.05)
                assert proxy.bodies.held == 0 and app.heads == 1
                # a chunked body, counted as it comes, and the client gone before its end
                c = await Conn.open(proxy.port)
                await c.send(b"POST /up HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                await asyncio.sleep(0.05)
                assert proxy.bodies.held == 5
                await c.close()
                await asyncio.sleep(0.05)
                assert proxy.bodies.held == 0

    run(scenario)


def test_a_large_body_goes_to_a_temp_file_and_arrives_intact(run, tmp_path):
    spool_dir = str(tmp_path / "spool")
    os.mkdir(spool_dir)

    async def scenario() -> None:
        with threaded_app() as app:
            async with proxy_for(app.port, buffer_memory=16 * 1024, spool_dir=spool_dir) as proxy:
                c = await Conn.open(proxy.port)
                body = os.urandom(3 * 1024 * 1024)
                await c.send(b"PUT /big HTTP/1.1\r\n" + HOST + b"Content-Length: %d\r\n\r\n" % len(body))
                await c.send(body[: 1024 * 1024])
                await asyncio.sleep(0.1)
                assert app.heads == 0 and len(held_spools(spool_dir)) == 1
                assert proxy.bodies.held == 0  # in the file, not in memory
                await c.send(body[1024 * 1024 :])
                r = await read_response(c.reader)
                assert (r.status, r.body) == (200, str(len(body)).encode())
                # chunked: also read whole, sent on with a Content-Length
                chunks = [body[i : i + 100_000] for i in range(0, 600_000, 100_000)]
                framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in chunks) + b"0\r\n\r\n"
                await c.send(b"POST /chunked HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n" + framed)
                r = await read_response(c.reader)
                assert (r.status, r.body) == (200, b"600000")
                await c.close()
                await asyncio.sleep(0.05)
                assert held_spools(spool_dir) == []  # closed (and so gone) with their requests

    run(scenario)


def test_a_held_body_over_the_cap_gets_413_and_frees_its_file(run, tmp_path):
    spool_dir = str(tmp_path)

    async def scenario() -> None:
        with threaded_app() as app:
            async with proxy_for(app.port, buffer_memory=1024, buffer_max=100_000, spool_dir=spool_dir) as proxy:
                c = await Conn.open(proxy.port)
                await c.send(b"POST /x HTTP/1.1\r\n" + HOST + b"Content-Length: 100001\r\n\r\n")
                r = await read_response(c.reader)  # told before any of it is read
                assert r.status == 413
                await c.close()
                c = await Conn.open(proxy.port)
                await c.send(b"POST /x HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n")
                for _ in range(11):
                    await c.send(b"%x\r\n%s\r\n" % (10_000, b"z" * 10_000))
                r = await read_response(c.reader)
                assert r.status == 413 and app.heads == 0
                assert await c.at_eof()
                await c.close()
                await asyncio.sleep(0.05)
                assert held_spools(spool_dir) == [] and proxy.bodies.held == 0
                # A body that came whole with its head (one read) is held to the same cap.
                c = await Conn.open(proxy.port)
                await c.send(b"POST /x HTTP/1.1\r\n" + HOST + b"Content-Length: 100001\r\n\r\n" + b"y" * 100_001)
                r = await read_response(c.reader)
                assert r.status == 413 and app.heads == 0
                await c.close()

    run(scenario)


def test_held_files_together_stay_under_the_disk_budget(run, tmp_path):
    async def scenario() -> None:
        with threaded_app() as app:
            kw = {"buffer_memory": 1024, "buffer_disk": 100_000, "spool_dir": str(tmp_path)}
            async with proxy_for(app.port, **kw) as proxy:
                first, second = await Conn.open(proxy.port), await Conn.open(proxy.port)
                for c in (first, second):
                    await c.send(b"PUT /x HTTP/1.1\r\n" + HOST + b"Content-Length: 80000\r\n\r\n" + b"a" * 60_000)
                    await asyncio.sleep(0.1)
                r = await read_response(second.reader)  # 120 KB would be held: the second is refused
                assert (r.status, r.header("Connection")) == (503, "close")
                assert proxy.bodies.spooled == 60_000
                await first.send(b"b" * 20_000)
                r = await read_response(first.reader)
                assert (r.status, r.body) == (200, b"80000")
                assert proxy.bodies.spooled == 0
                for c in (first, second):
                    await c.close()

    run(scenario)


def test_expect_100_continue_is_answered_by_the_proxy_when_it_buffers(run):
    async def scenario() -> None:
        with threaded_app() as app:
            async with proxy_for(app.port) as proxy:
                c = await Conn.open(proxy.port)
                await c.send(b"POST /e HTTP/1.1\r\n" + HOST + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
                interim = await read_response(c.reader)
                assert interim.status == 100 and app.heads == 0
                await c.send(b"hello")
                r = await read_response(c.reader)
                assert (r.status, r.body) == (200, b"5")
                await c.close()

    run(scenario)


def test_a_held_request_goes_to_the_route_current_when_its_body_is_complete(run):
    async def scenario() -> None:
        with threaded_app() as old, threaded_app() as new:
            async with proxy_for(old.port) as proxy:
                c = await Conn.open(proxy.port)
                await c.send(b"POST /x HTTP/1.1\r\n" + HOST + b"Content-Length: 4\r\n\r\nab")
                await asyncio.sleep(0.05)
                # A rollout swaps the targets meanwhile (and drains the old ones, which this is not counted on).
                proxy.set_routes({"shop": Route(app="shop", release="v2", targets=(Target("127.0.0.1", new.port),))})
                old.close()
                await c.send(b"cd")
                r = await read_response(c.reader)
                assert (r.status, new.heads, old.heads) == (200, 1, 0)
                await c.close()

    run(scenario)


def test_the_body_timeout_is_a_minimum_rate_not_reset_by_each_chunk(run):
    async def scenario() -> None:
        with threaded_app() as app:
            async with proxy_for(app.port, body_min_rate=1000, body_grace=0.5, read_timeout=30) as proxy:
                c = await Conn.open(proxy.port)
                await c.send(b"POST /slow HTTP/1.1\r\n" + HOST + b"Content-Length: 100000\r\n\r\n")
                started = time.monotonic()
                with contextlib.suppress(ConnectionError):
                    for _ in range(100):  # 10 bytes every 50 ms: 200 B/s, far below 1000 B/s
                        await c.send(b"x" * 10)
                        await asyncio.sleep(0.05)
                        if c.reader.at_eof() or c.reader._buffer:  # type: ignore[attr-defined]
                            break
                r = await read_response(c.reader)
                took = time.monotonic() - started
                assert r.status == 408 and r.header("Connection") == "close"
                assert took < 2.5  # 0.5 s grace + the bytes sent cover ~0.2 s more; not read_timeout (30 s)
                assert app.heads == 0
                await c.close()

                # A client at a fine rate is not cut: 20 KB at ~40 KB/s.
                c = await Conn.open(proxy.port)
                await c.send(b"POST /ok HTTP/1.1\r\n" + HOST + b"Content-Length: 20000\r\n\r\n")
                for _ in range(20):
                    await c.send(b"y" * 1000)
                    await asyncio.sleep(0.025)
                r = await read_response(c.reader)
                assert (r.status, r.body) == (200, b"20000")
                await c.close()

    run(scenario)


def test_connections_are_capped_per_client_address_and_in_all(run):
    async def scenario() -> None:
        upstream = await App().start()
        try:
            async with proxy_for(upstream.port, max_connections_per_client=3, max_connections=5) as proxy:
                held = [await open_from("127.0.0.1", proxy.port) for _ in range(3)]
                reader, writer = await open_from("127.0.0.1", proxy.port)  # a fourth from the same address
                refused = await read_response(reader)
                assert (refused.status, refused.header("Connection")) == (503, "close")
                assert await reader.read() == b""
                writer.close()
                # another address is not held back by the first one's connections
                r2, w2 = await open_from("127.0.0.2", proxy.port)
                w2.write(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
                assert (await read_response(r2)).status == 200
                _r3, w3 = await open_from("127.0.0.3", proxy.port)  # five open now: the total cap
                r4, w4 = await open_from("127.0.0.4", proxy.port)
                assert (await read_response(r4)).status == 503
                w4.close()
                assert proxy.refused == 2
                # a closed connection frees its slot
                held[0][1].close()
                await asyncio.sleep(0.1)
                reader, writer = await open_from("127.0.0.1", proxy.port)
                writer.write(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
                assert (await read_response(reader)).status == 200
                for w in [writer, w2, w3, *(w for _, w in held[1:])]:
                    w.close()
                await asyncio.sleep(0.1)
                assert proxy.per_peer == {} and not proxy.clients
        finally:
            await upstream.close()

    run(scenario)


def test_a_trusted_proxy_is_not_capped_per_address(run):
    async def scenario() -> None:
        upstream = await App().start()
        try:
            async with proxy_for(upstream.port, max_connections_per_client=2, trusted_proxies=["127.0.0.9"]) as proxy:
                conns = [await open_from("127.0.0.9", proxy.port) for _ in range(5)]
                for reader, writer in conns:
                    writer.write(b"GET / HTTP/1.1\r\n" + HOST + b"\r\n")
                    assert (await read_response(reader)).status == 200
                    writer.close()
        finally:
            await upstream.close()

    run(scenario)


def test_an_idle_tunnel_is_closed_and_a_busy_one_is_not(run):
    async def scenario() -> None:
        upstream = await App().start()
        try:
            async with proxy_for(upstream.port, tunnel_idle_timeout=0.5) as proxy:
                host = b"Host: shop.lbsolo.localhost\r\n"
                busy = await Conn.open(proxy.port)
                idle = await Conn.open(proxy.port)
                for c in (busy, idle):
                    await c.send(b"GET /ws HTTP/1.1\r\n" + host + b"Connection: Upgrade\r\nUpgrade: echo\r\n\r\n")
                    assert (await read_response(c.reader)).status == 101
                for _ in range(8):  # 1.2 s of traffic on one, none on the other
                    await busy.send(b"ping")
                    assert await busy.reader.readexactly(4) == b"PING"
                    await asyncio.sleep(0.15)
                assert await idle.at_eof(timeout=0.5)
                await busy.send(b"still")
                assert await busy.reader.readexactly(5) == b"STILL"
                await busy.close()
                await idle.close()
        finally:
            await upstream.close()

    run(scenario)


SLOW_CLIENTS = 1000
SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")  # 250 each: under the default cap


async def _slow_bodies(port: int, stop: asyncio.Event) -> list[asyncio.StreamWriter]:
    """SLOW_CLIENTS connections each sending a large body's head and then a few bytes now and then."""
    writers = []
    for i in range(SLOW_CLIENTS):
        _, writer = await open_from(SOURCES[i % len(SOURCES)], port)
        writer.write(b"POST /upload HTTP/1.1\r\n" + HOST + b"Content-Length: 1000000\r\n\r\nstart")
        writers.append(writer)

    async def trickle() -> None:
        while not stop.is_set():
            for w in writers:
                if not w.is_closing():
                    w.write(b"..")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    asyncio.get_running_loop().create_task(trickle())
    return writers


async def _normal_requests(port: int, count: int, timeout: float) -> list[float]:
    """A normal client's POSTs with a small body; the time each took (raises on a late answer)."""
    took = []
    c = await Conn.open(port)
    try:
        for i in range(count):
            started = time.monotonic()
            r = await asyncio.wait_for(
                c.request("POST", f"/order/{i}", host="shop.lbsolo.localhost", body=b"q=1"), timeout
            )
            assert (r.status, r.body) == (200, b"3")
            took.append(time.monotonic() - started)
    finally:
        await c.close()
    return took


@pytest.mark.parametrize("buffering", [True, False], ids=["buffered", "streaming"])
def test_a_thousand_slow_bodies_do_not_starve_a_four_worker_app(run, buffering: bool):
    """Buffered (the default), every normal request is served while 1,000 slow bodies trickle in.

    Streaming (buffering off, as today's proxy always did), the same load holds all four workers
    and the normal client is not answered: the case the default protects against."""

    async def scenario() -> None:
        with threaded_app(workers=4) as app:
            async with proxy_for(app.port, request_buffering=buffering) as proxy:
                stop = asyncio.Event()
                writers = await _slow_bodies(proxy.port, stop)
                try:
                    await asyncio.sleep(0.5)
                    if buffering:
                        took = await _normal_requests(proxy.port, 50, timeout=5)
                        assert len(took) == 50 and app.heads == 50  # only the normal client reached the app
                        assert proxy.bodies.held < SLOW_CLIENTS * 64  # a few bytes held per slow client
                    else:
                        for _ in range(100):  # until the slow bodies have reached every worker
                            if app.heads >= 4:
                                break
                            await asyncio.sleep(0.05)
                        with pytest.raises(TimeoutError):
                            await _normal_requests(proxy.port, 1, timeout=2)
                        assert app.heads == 4  # every worker holds one slow body
                finally:
                    stop.set()
                    for w in writers:
                        w.transport.abort()

    run(scenario)
