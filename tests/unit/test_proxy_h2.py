"""HTTP/2 on the HTTPS listener: ALPN, routing, headers, bodies both ways, concurrency; real TLS sockets,
python-hyper's h2 as the client, the harness's HTTP/1.1 app behind."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import ssl
from pathlib import Path

import pytest

pytest.importorskip("h2")

from lbsolo.proxy import ProxyServer, Route, Target
from lbsolo.proxy_h2 import MAX_STREAMS
from lbsolo.proxy_tls import CertStore, LocalCA
from tests.unit.h2_client import H2Client, tls_context
from tests.unit.proxy_harness import DOMAIN, App, read_response

HOST = "hello.lbsolo.localhost"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("ca")).load_or_create()


@pytest.fixture(scope="module")
def tls(ca: LocalCA):
    return CertStore(DOMAIN, ca).server_context()


@contextlib.asynccontextmanager
async def h2_stack(tls, *, max_body: int | None = None, request_buffering: bool = True, **proxy_kw):
    app = await App().start()
    proxy = ProxyServer(port=0, domain=DOMAIN, https_port=0, tls=tls, **proxy_kw)
    target = (Target("127.0.0.1", app.port),)
    proxy.set_routes(
        {
            "hello": Route("hello", "v1", target, max_body=max_body, request_buffering=request_buffering),
            "down": Route("down", "v1", ()),
        }
    )
    await proxy.start()
    try:
        yield proxy, app
    finally:
        await proxy.stop(1)
        await app.close()


def test_alpn_offers_h2_and_http11_on_one_port(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            resp = await client.request("GET", "/over-h2")
            assert (resp.status, resp.json()["target"]) == (200, "/over-h2")
            await client.close()
            # A client that offers only HTTP/1.1 (or nothing) gets today's path.
            for alpn in (("http/1.1",), ()):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", proxy.https_port, ssl=tls_context(ca.cert_path, alpn), server_hostname=HOST
                )
                assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == (alpn[0] if alpn else None)
                writer.write(f"GET /h1 HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                assert (await read_response(reader)).json()["target"] == "/h1"
                writer.close()
            # The app saw the h2 request as HTTP/1.1 with the forwarding headers.
            seen = app.seen[0]
            assert (seen.method, seen.target, seen.header("Host")) == ("GET", "/over-h2", HOST)
            assert seen.header("X-Forwarded-Proto") == "https" and seen.header("X-Forwarded-For") == "127.0.0.1"

    run(scenario)


def test_h2_requests_are_routed_like_http11_ones(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls, max_body=1000) as (proxy, app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            assert (await client.request(authority="nobody.lbsolo.localhost")).status == 404
            resp = await client.request(authority="down.lbsolo.localhost", headers=[("accept", "application/json")])
            assert resp.status == 503 and resp.json()["error"]["code"] == "app_not_running"
            assert (await client.request("POST", "/", body=b"x" * 2000)).status == 413
            connect = await client.request("CONNECT")
            assert connect.status == 405 and b"HTTP/1.1" in connect.body
            # The connection goes on after each of the proxy's answers.
            resp = await client.request("GET", "/after?q=1", headers=[("cookie", "a=1"), ("cookie", "b=2")])
            assert resp.status == 200 and resp.json()["target"] == "/after?q=1"
            assert app.seen[-1].header("Cookie") == "a=1; b=2"
            assert resp.header("x-request-id")
            await client.close()
        # Counted in the app's metrics like any request.
        assert proxy.metrics()["hello"]["requests"] >= 2

    run(scenario)


def test_response_headers_lose_what_is_http11s_own(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, _app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            resp = await client.request("GET", "/hop")
            names = {k for k, _ in resp.headers}
            assert (resp.status, resp.body, resp.header("x-public")) == (200, b"ok", "yes")
            assert not names & {b"connection", b"keep-alive", b"x-internal", b"transfer-encoding"}
            chunked = await client.request("GET", "/chunked")
            assert (chunked.body, chunked.header("x-app")) == (b"hello chunked world", "chunky")
            assert chunked.header("transfer-encoding") is None
            head = await client.request("HEAD", "/big?100000")
            assert (head.status, head.body, head.header("content-length")) == (200, b"", "100000")
            nocontent = await client.request("GET", "/nocontent")
            assert (nocontent.status, nocontent.body) == (204, b"")
            eof = await client.request("GET", "/eof")
            assert eof.body == b"until the connection closes"
            await client.close()

    run(scenario)


@pytest.mark.parametrize("buffering", [True, False])
def test_bodies_both_ways(run, tls, ca: LocalCA, buffering: bool):
    async def scenario():
        async with h2_stack(tls, request_buffering=buffering) as (proxy, _app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            small = await client.request("POST", "/form", body=b"a=1", headers=[("content-length", "3")])
            assert small.json()["body_len"] == 3
            body = bytes(range(256)) * 8192  # 2 MiB: past every window
            resp = await client.request("PUT", "/upload", body=body)  # no content-length: chunked or held
            assert resp.status == 200
            assert resp.json()["body_sha"] == hashlib.sha256(body).hexdigest()
            big = await client.request("GET", "/big?3000000")
            assert len(big.body) == 3_000_000 and big.body[:256] == bytes(range(256))
            await client.close()

    run(scenario)


def test_many_concurrent_streams_and_one_reset_disturbs_no_other(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, _app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            slow = client.start("GET", "/slow?0.3")
            sids = [client.start("GET", f"/n/{i}") for i in range(100)]
            client.reset(slow)
            resps = await asyncio.gather(*(client.response(s) for s in sids))
            assert [r.json()["target"] for r in resps] == [f"/n/{i}" for i in range(100)]
            assert (await client.request("GET", "/still")).status == 200
            assert client.goaway is None
            await client.close()

    run(scenario)


def test_stop_sends_goaway_and_lets_streams_finish(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, _app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            assert (await client.request()).status == 200
            sid = client.start("GET", "/slow?0.3")
            await asyncio.sleep(0.1)
            stopping = asyncio.get_running_loop().create_task(proxy.stop(2))
            resp = await client.response(sid)
            assert resp.status == 200 and client.goaway == 0
            await asyncio.wait_for(client.closed.wait(), 2)
            await stopping
            await client.close()

    run(scenario)


def test_idle_h2_connection_is_closed(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls, idle_timeout=0.3) as (proxy, _app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            assert (await client.request()).status == 200
            await asyncio.wait_for(client.closed.wait(), 3)
            assert client.goaway == 0
            await client.close()

    run(scenario)


def test_the_listener_offers_h2_from_one_place(tmp_path: Path):
    from lbsolo.proxy_tls import ALPN_PROTOCOLS

    assert ALPN_PROTOCOLS[0] == "h2" and "http/1.1" in ALPN_PROTOCOLS


# -- hostile clients -------------------------------------------------------------------------------

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PROTOCOL_ERROR, _REFUSED_STREAM, _CANCEL, _ENHANCE_YOUR_CALM = 0x1, 0x7, 0x8, 0xB


def _frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload


async def _raw(port: int, cafile: Path, data: bytes) -> list[tuple[int, bytes]]:
    """Send `data` on a fresh h2 connection and read what comes back until the server closes: (type, payload)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls_context(cafile, ("h2",)), server_hostname=HOST
    )
    writer.write(data)
    got = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while chunk := await asyncio.wait_for(reader.read(65536), 3):
            got += chunk
    writer.close()
    frames = []
    while len(got) >= 9:
        length = int.from_bytes(got[:3], "big")
        frames.append((got[3], got[9 : 9 + length]))
        got = got[9 + length :]
    return frames


def _goaway(frames: list[tuple[int, bytes]]) -> int | None:
    codes = [int.from_bytes(payload[4:8], "big") for kind, payload in frames if kind == 0x7]
    return codes[-1] if codes else None


def test_a_bad_preface_or_a_malformed_frame_gets_goaway_protocol_error(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, app):
            frames = await _raw(proxy.https_port, ca.cert_path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 64)
            assert _goaway(frames) == _PROTOCOL_ERROR
            # A DATA frame on stream 0 after a good preface.
            bad = _PREFACE + _frame(0x4, 0, 0) + _frame(0x0, 0, 0, b"data")
            assert _goaway(await _raw(proxy.https_port, ca.cert_path, bad)) == _PROTOCOL_ERROR
            # A SETTINGS frame whose length is not a multiple of 6.
            bad = _PREFACE + _frame(0x4, 0, 0, b"\0\0\0")
            assert _goaway(await _raw(proxy.https_port, ca.cert_path, bad)) is not None
            assert not app.seen and not proxy.clients

    run(scenario)


def test_a_continuation_flood_is_bounded(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, app):
            flood = _PREFACE + _frame(0x4, 0, 0) + _frame(0x1, 0, 1, b"\x82")  # HEADERS, no END_HEADERS
            flood += b"".join(_frame(0x9, 0, 1, b"\x00" * 1000) for _ in range(200))
            assert _goaway(await _raw(proxy.https_port, ca.cert_path, flood)) == _PROTOCOL_ERROR
            assert not app.seen

    run(scenario)


def test_streams_past_the_limit_are_refused(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, _app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            assert (await client.request()).status == 200  # our SETTINGS are acknowledged by now
            # This client ignores the advertised limit (h2 would keep it otherwise).
            client.conn.remote_settings._settings[3] = collections.deque([1000])
            sids = [client.start("GET", "/slow?0.5") for _ in range(MAX_STREAMS + 20)]
            resps = await asyncio.gather(*(client.response(s) for s in sids))
            refused = [r for r in resps if r.reset == _REFUSED_STREAM]
            assert len(refused) == 20
            assert [(r.status, r.body[:80]) for r in resps if r.reset is None and r.status != 200] == []
            assert (await client.request("GET", "/after")).status == 200  # and the connection goes on
            await client.close()

    run(scenario)


def test_rapid_reset_closes_the_connection(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            assert (await client.request()).status == 200
            with contextlib.suppress(Exception):
                for i in range(1000):
                    client.reset(client.start("GET", "/slow?1"))
                    if i % 50 == 0:
                        await asyncio.sleep(0)
            await asyncio.wait_for(client.closed.wait(), 3)
            assert client.goaway == _ENHANCE_YOUR_CALM
            assert len(app.seen) < 200  # the work it caused stays bounded
            await client.close()

    run(scenario)


def test_a_head_past_the_bounds_gets_431(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls) as (proxy, app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            assert (await client.request()).status == 200
            resp = await client.request("GET", "/big-head", headers=[("x-big", "a" * 70_000)])
            assert resp.status == 431
            many = [(f"x-h{i}", "v") for i in range(200)]
            assert (await client.request("GET", "/many", headers=many)).status == 431
            assert (await client.request("GET", "/fine")).status == 200
            assert [s.target for s in app.seen] == ["/", "/fine"]
            # Past the advertised header list size, h2 itself ends the connection.
            client.start("GET", "/huge", headers=[("x-huge", "a" * 300_000)])
            await asyncio.wait_for(client.closed.wait(), 3)
            assert client.goaway is not None
            await client.close()

    run(scenario)


def test_a_client_that_never_reads_costs_a_bounded_buffer(run, tls, ca: LocalCA):
    async def scenario():
        async with h2_stack(tls, read_timeout=1.0) as (proxy, app):
            client = await H2Client.open(proxy.https_port, ca.cert_path)
            assert (await client.request()).status == 200
            client.auto_ack = False  # its windows never open again
            sid = client.start("GET", "/big?200000000")
            await asyncio.sleep(0.8)
            sent = app.sent
            await asyncio.sleep(0.4)
            assert app.sent == sent < 32 << 20  # the app is not read: its socket buffers, no more
            resp = await client.response(sid, timeout=5)
            assert resp.reset == _CANCEL  # the stream is reset after the read timeout
            client.auto_ack = True
            assert (await client.request("GET", "/other")).status == 200  # other streams go on
            await client.close()

    run(scenario)
