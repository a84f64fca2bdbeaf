"""The reverse proxy over real sockets on 127.0.0.1: a tiny asyncio upstream, raw HTTP clients."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbsolo.proxy import Route, RouteTable, Target, normalize_host
from tests.unit.proxy_harness import DOMAIN, App, Conn, closed_port, read_response, stack

# ---------------------------------------------------------------------------------------------
# pure decisions


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hello.lbsolo.localhost", "hello.lbsolo.localhost"),
        ("Hello.LBSOLO.localhost:8080", "hello.lbsolo.localhost"),
        (b"hello.lbsolo.localhost:80", "hello.lbsolo.localhost"),
        ("hello.lbsolo.localhost.", "hello.lbsolo.localhost"),
        ("hello.lbsolo.localhost.:8080", "hello.lbsolo.localhost"),
        ("[::1]:8080", "[::1]"),
        ("[::1]", "[::1]"),
        ("[::1", "[::1"),
        ("::1", "::1"),
        ("127.0.0.1:9", "127.0.0.1"),
        ("  spaced.example  ", "spaced.example"),
        ("", ""),
        (b"", ""),
        (None, ""),
    ],
)
def test_normalize_host(raw, expected):
    assert normalize_host(raw) == expected


def test_route_table_matches_only_direct_app_subdomains():
    hello = Route(app="hello", release="v3", targets=(Target("127.0.0.1", 41000),))
    idle = Route(app="idle")
    table = RouteTable("LBSolo.Localhost.", {"idle": idle, "hello": hello})
    assert table.domain == "lbsolo.localhost"
    assert table.match("hello.lbsolo.localhost") is hello
    assert table.match("idle.lbsolo.localhost") is idle
    assert table.match("nosuch.lbsolo.localhost") is None
    assert table.match("hello.example.com") is None
    assert table.match("hello.otherlbsolo.localhost") is None
    assert table.match("lbsolo.localhost") is None
    assert table.match(".lbsolo.localhost") is None
    assert table.match("sub.hello.lbsolo.localhost") is None
    assert table.match("") is None
    assert table.apps() == ["hello", "idle"]
    assert RouteTable(DOMAIN).apps() == []


def test_route_table_is_a_snapshot():
    routes = {"a": Route(app="a")}
    table = RouteTable(DOMAIN, routes)
    routes["b"] = Route(app="b")
    assert table.apps() == ["a"]
    with pytest.raises(TypeError):
        table.routes["c"] = Route(app="c")  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# routing and forwarding


def test_get_is_routed_by_host_and_forwarding_headers_are_set(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            r = await c.request(
                path="/some/path?q=1",
                host=f"Hello.LBSOLO.localhost:{proxy.port}",
                headers={
                    "X-Forwarded-For": "10.0.0.1",
                    "X-Forwarded-Proto": "https",
                    "Connection": "keep-alive, X-Secret",
                    "X-Secret": "drop me",
                    "Keep-Alive": "timeout=5",
                    "Proxy-Connection": "keep-alive",
                    "X-Kept": "kept",
                },
            )
            assert r.status == 200
            assert r.json()["target"] == "/some/path?q=1"
            [seen] = app.seen
            assert seen.header("Host") == f"Hello.LBSOLO.localhost:{proxy.port}"
            assert seen.header("X-Forwarded-For") == "127.0.0.1"  # a client's own claims are replaced
            assert seen.header("X-Forwarded-Proto") == "http"
            assert seen.header("X-Forwarded-Host") == f"Hello.LBSOLO.localhost:{proxy.port}"
            assert seen.header("X-Kept") == "kept"
            for hop in ("X-Secret", "Keep-Alive", "Proxy-Connection", "Connection"):
                assert seen.header(hop) is None, hop
            await c.close()

    run(scenario)


def test_hop_by_hop_response_headers_are_removed(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            r = await c.request(path="/hop")
            assert (r.status, r.body) == (200, b"ok")
            assert r.header("X-Public") == "yes"
            assert r.header("X-Internal") is None
            assert r.header("Keep-Alive") is None
            assert r.header("Connection") is None
            await c.close()

    run(scenario)


def test_keep_alive_serves_two_requests_on_one_connection_and_reuses_upstream(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            assert (await c.request(path="/one")).json()["target"] == "/one"
            assert (await c.request(path="/two")).json()["target"] == "/two"
            await c.close()
            c = await Conn.open(proxy.port)
            assert (await c.request(path="/three")).json()["target"] == "/three"
            await c.close()
            assert app.connections == 1  # the pooled upstream connection was reused

    run(scenario)


def test_pipelined_requests_are_answered_in_order(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            raw = b"".join(
                b"GET /slow?%s HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\n" % delay
                for delay in (b"0.1", b"0", b"0.03")
            )
            await c.send(raw + b"POST /posted HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\nContent-Length: 3\r\n\r\nabc")
            targets = [(await read_response(c.reader)).json()["target"] for _ in range(3)]
            assert targets == ["/slow?0.1", "/slow?0", "/slow?0.03"]
            last = (await read_response(c.reader)).json()
            assert (last["target"], last["body_len"]) == ("/posted", 3)
            await c.close()

    run(scenario)


def test_a_long_pipeline_pauses_reading_and_is_answered_in_order(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            raw = b"".join(b"GET /p%d HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\n" % i for i in range(40))
            await c.send(raw)
            targets = [(await read_response(c.reader)).json()["target"] for _ in range(40)]
            assert targets == [f"/p{i}" for i in range(40)]
            assert (await c.request(path="/after")).status == 200  # reading resumed
            assert len(app.seen) == 41
            await c.close()

    run(scenario)


def test_request_bodies_arrive_intact(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            small = b"name=value&x=1"
            r = await c.request("POST", "/form", body=small)
            assert r.json()["body_sha"] == hashlib.sha256(small).hexdigest()

            parts = [b"first-", b"second-" * 100, b"third"]
            chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
            await c.send(
                b"POST /chunked-up HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + chunked
            )
            r = await read_response(c.reader)
            assert r.json()["body_sha"] == hashlib.sha256(b"".join(parts)).hexdigest()
            # Read whole first (request buffering): the app gets it with a length.
            assert app.seen[-1].header("Transfer-Encoding") is None
            assert app.seen[-1].header("Content-Length") == str(len(b"".join(parts)))

            big = bytes(range(256)) * (12 * 1024)  # 3 MiB: goes through backpressure
            r = await c.request("PUT", "/upload", body=big)
            assert r.json()["body_len"] == len(big)
            assert r.json()["body_sha"] == hashlib.sha256(big).hexdigest()
            await c.close()

    run(scenario)


def test_large_response_streams_intact(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            size = 5 * 1024 * 1024
            r = await c.request(path=f"/big?{size}")
            assert r.status == 200
            assert r.header("Content-Length") == str(size)
            expected = (bytes(range(256)) * 256 * (size // 65536 + 1))[:size]
            assert r.body == expected
            await c.close()

    run(scenario)


def test_slow_reading_client_gets_the_whole_response(run):
    async def scenario():
        async with stack() as (proxy, _app):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port, limit=4096)
            writer.transport.set_write_buffer_limits(0)
            size = 2 * 1024 * 1024
            writer.write(b"GET /big?%d HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\n" % size)
            await asyncio.sleep(0.1)  # let every buffer on the way fill up
            r = await read_response(reader)
            assert len(r.body) == size
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    run(scenario)


def test_chunked_and_close_delimited_responses(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            r = await c.request(path="/chunked")
            assert (r.body, r.header("X-App")) == (b"hello chunked world", "chunky")
            r = await c.request(path="/eof")  # re-framed as chunked for an HTTP/1.1 client ...
            assert r.header("Transfer-Encoding") == "chunked"
            assert r.body == b"until the connection closes"
            r = await c.request(path="/one")  # ... which keeps its connection
            assert r.status == 200
            await c.close()

            c = await Conn.open(proxy.port)
            r = await c.request(path="/chunked", version="1.0")  # HTTP/1.0: body until close
            assert r.header("Transfer-Encoding") is None
            assert r.body == b"hello chunked world"
            assert await c.at_eof()
            await c.close()

    run(scenario)


def test_head_and_204_have_no_body_and_keep_the_connection(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            r = await c.request("HEAD", "/big?1000")
            assert (r.status, r.header("Content-Length")) == (200, "1000")
            r = await c.request("HEAD", "/json")
            assert r.status == 200 and int(r.header("Content-Length") or 0) > 0
            r = await c.request(path="/nocontent")
            assert (r.status, r.header("X-App"), r.header("Transfer-Encoding")) == (204, "yes", None)
            r = await c.request(path="/after")
            assert r.json()["target"] == "/after"
            await c.close()

    run(scenario)


def test_http10_client_is_closed_unless_it_asks_for_keep_alive(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            r = await c.request(path="/a", version="1.0", headers={"Connection": "keep-alive"})
            assert r.header("Connection") == "keep-alive"
            r = await c.request(path="/b", version="1.0")
            assert r.json()["target"] == "/b"
            assert r.header("Connection") == "close"
            assert await c.at_eof()
            await c.close()

    run(scenario)


def test_connection_close_is_honoured(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            r = await c.request(path="/x", headers={"Connection": "close"})
            assert r.status == 200 and r.header("Connection") == "close"
            assert await c.at_eof()
            await c.close()

    run(scenario)


def test_upgrade_becomes_a_tunnel(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            await c.send(
                b"GET /ws HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n"
                b"Connection: Upgrade\r\nUpgrade: echo\r\n\r\nearly bytes|"
            )
            r = await read_response(c.reader)
            assert (r.status, r.header("Upgrade"), r.header("Connection")) == (101, "echo", "Upgrade")
            assert app.seen[0].header("Upgrade") == "echo"
            await c.send(b"more")
            got = b""
            while len(got) < len(b"EARLY BYTES|MORE"):
                got += await c.reader.read(100)
            assert got == b"EARLY BYTES|MORE"
            await c.close()

    run(scenario)


def test_an_idle_tunnel_is_closed_on_both_sides(run):
    async def scenario():
        async with stack(tunnel_idle_timeout=0.3) as (proxy, app):
            target = Target("127.0.0.1", app.port)
            c = await Conn.open(proxy.port)
            await c.send(
                b"GET /ws HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
            )
            assert (await read_response(c.reader)).status == 101
            await c.send(b"ping")
            assert await c.reader.readexactly(4) == b"PING"
            assert proxy.in_flight(target) == 1  # a tunnel counts for drain
            started = time.monotonic()
            assert await c.at_eof(timeout=3)  # nothing moved for tunnel_idle_timeout: the client side closes
            assert time.monotonic() - started >= 0.25
            for _ in range(100):  # ... and the app's side, and the tunnel no longer counts
                if not proxy.pool.connections and not proxy.in_flight(target):
                    break
                await asyncio.sleep(0.01)
            assert not proxy.pool.connections
            assert proxy.in_flight(target) == 0
            await c.close()

    run(scenario)


# ---------------------------------------------------------------------------------------------
# errors


def test_unknown_host_gets_a_plain_404_that_names_no_app(run):
    async def scenario():
        async with stack() as (proxy, _app):
            proxy.set_routes({**proxy.table.routes, "secret-admin": Route(app="secret-admin")})
            c = await Conn.open(proxy.port)
            r = await c.request(host=f"nosuch.lbsolo.localhost:{proxy.port}")
            assert r.status == 404
            assert r.header("Content-Type") == "text/html; charset=utf-8"
            page = r.body.decode()
            assert "nosuch.lbsolo.localhost" in page
            assert "hello" not in page and "secret-admin" not in page
            r = await c.request(host="<b>x</b>.example.com")
            assert "&lt;b&gt;x&lt;/b&gt;" in r.body.decode() and "<b>x</b>" not in r.body.decode()
            r = await c.request(host="example.com", headers={"Accept": "application/json"})
            assert r.status == 404
            assert r.header("Content-Type") == "application/json"
            assert r.json()["error"]["code"] == "not_found"
            r = await c.request(path="/still-alive")  # errors keep the connection
            assert r.status == 200
            await c.close()

    run(scenario)


def test_app_without_targets_gets_503(run):
    async def scenario():
        async with stack() as (proxy, _app):
            proxy.set_routes({"idle": Route(app="idle")})
            c = await Conn.open(proxy.port)
            r = await c.request(host="idle.lbsolo.localhost")
            assert r.status == 503
            assert "app idle is not running" in r.body.decode()
            r = await c.request("HEAD", host="idle.lbsolo.localhost")
            assert (r.status, r.body) == (503, b"")
            await c.close()

    run(scenario)


def test_closed_target_port_gets_502(run):
    async def scenario():
        async with stack() as (proxy, _app):
            port = await closed_port()
            proxy.set_routes({"down": Route(app="down", targets=(Target("127.0.0.1", port),))})
            c = await Conn.open(proxy.port)
            r = await c.request(host="down.lbsolo.localhost", headers={"Accept": "application/json"})
            assert r.status == 502
            assert r.json()["error"]["code"] == "bad_gateway"
            await c.close()

    run(scenario)


def test_broken_app_responses_get_502(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            assert (await c.request(path="/garbage")).status == 502
            assert (await c.request(path="/hangup")).status == 502
            assert (await c.request(path="/fine")).status == 200  # same client connection
            assert (await c.request(path="/hangup")).status == 502  # retried once, then 502
            await c.close()

    run(scenario)


def test_dead_replica_is_skipped_when_another_target_answers(run):
    async def scenario():
        async with stack() as (proxy, app):
            port = await closed_port()
            targets = (Target("127.0.0.1", port), Target("127.0.0.1", app.port))
            proxy.set_routes({"hello": Route(app="hello", targets=targets)})
            for i in range(4):
                c = await Conn.open(proxy.port)
                assert (await c.request(path=f"/{i}")).status == 200
                await c.close()

    run(scenario)


def test_slow_app_gets_504(run):
    async def scenario():
        async with stack(read_timeout=0.15) as (proxy, _app):
            c = await Conn.open(proxy.port)
            started = time.monotonic()
            r = await c.request(path="/slow?3")
            assert r.status == 504
            assert time.monotonic() - started < 2
            await c.close()

    run(scenario)


def test_garbage_gets_400_and_the_server_keeps_serving(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            await c.send(b"\x16\x03\x01\x00\xa5 this is not http\r\n\r\n")
            r = await read_response(c.reader)
            assert r.status == 400 and r.header("Connection") == "close"
            assert await c.at_eof()
            await c.close()

            c = await Conn.open(proxy.port)
            await c.send(
                b"GET / HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
            )
            assert (await read_response(c.reader)).status == 400
            await c.close()

            c = await Conn.open(proxy.port)
            r = await c.request(path="/fine")
            assert r.status == 200
            await c.close()

    run(scenario)


def test_missing_host_on_http11_gets_400_and_oversized_head_gets_431(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            r = await c.request(host=None)
            assert r.status == 400
            await c.close()
            c = await Conn.open(proxy.port)
            r = await c.request(headers={"X-Big": "x" * 70_000})
            assert r.status == 431
            await c.close()
            assert app.seen == []

    run(scenario)


def test_idempotent_request_is_retried_when_a_pooled_connection_is_dead(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            assert (await c.request(path="/die-on-reuse")).status == 200
            r = await c.request(path="/die-on-reuse/again")
            assert r.status == 200 and r.json()["target"] == "/die-on-reuse/again"
            assert app.connections == 2
            await c.request(path="/die-on-reuse")
            r = await c.request("POST", "/die-on-reuse", body=b"x")  # not idempotent: no retry
            assert r.status == 502
            await c.close()

    run(scenario)


def test_slow_headers_are_cut_off(run):
    async def scenario():
        async with stack(header_timeout=0.1) as (proxy, _app):
            c = await Conn.open(proxy.port)
            await c.send(b"GET / HTTP/1.1\r\nHost: hel")
            started = time.monotonic()
            r = await read_response(c.reader)
            assert r.status == 408 and r.header("Connection") == "close"
            assert await c.at_eof(timeout=3)
            assert time.monotonic() - started < 2
            await c.close()

    run(scenario)


# ---------------------------------------------------------------------------------------------
# lifecycle


def test_set_routes_takes_effect_for_the_next_request(run):
    async def scenario():
        async with stack() as (proxy, app):
            other = await App().start()
            try:
                c = await Conn.open(proxy.port)
                assert (await c.request(host="new.lbsolo.localhost")).status == 404
                proxy.set_routes(
                    {
                        "hello": Route(app="hello", targets=(Target("127.0.0.1", other.port),)),
                        "new": Route(app="new", targets=(Target("127.0.0.1", app.port),)),
                    }
                )
                assert (await c.request(path="/n", host="new.lbsolo.localhost")).status == 200
                assert (await c.request(path="/h")).status == 200
                assert [s.target for s in app.seen] == ["/n"]
                assert [s.target for s in other.seen] == ["/h"]
                await c.close()
            finally:
                await other.close()

    run(scenario)


def test_stop_lets_in_flight_requests_finish(run):
    async def scenario():
        async with stack() as (proxy, _app):
            idle = await Conn.open(proxy.port)
            busy = await Conn.open(proxy.port)
            pending = asyncio.ensure_future(busy.request(path="/slow?0.15"))
            await asyncio.sleep(0.05)
            await proxy.stop(timeout=3)
            r = await pending
            assert r.status == 200 and r.header("Connection") == "close"
            assert await idle.at_eof()
            with pytest.raises(OSError):
                await Conn.open(proxy.port)
            await idle.close()
            await busy.close()

    run(scenario)


def test_stop_is_bounded(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            pending = asyncio.ensure_future(c.request(path="/slow?10"))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            await proxy.stop(timeout=0.15)
            assert time.monotonic() - started < 1.5
            with pytest.raises((AssertionError, ConnectionError, asyncio.IncompleteReadError)):
                await pending
            await c.close()

    run(scenario)


def test_response_backpressure_bounds_what_the_proxy_reads(run):
    async def scenario():
        async with stack() as (proxy, app):
            c = await Conn.open(proxy.port)
            size = 256 * 1024 * 1024
            await c.send(b"GET /big?%d HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\n" % size)
            await asyncio.sleep(0.25)  # the client reads nothing
            assert 0 < app.sent < 64 * 1024 * 1024
            await c.close()

    run(scenario)


def test_request_backpressure_bounds_what_the_proxy_accepts_and_a_stalled_app_times_out(run):
    async def scenario():
        # A streaming app (request buffering off): the body goes on as the app reads it.
        async with stack(request_buffering=False, read_timeout=0.4) as (proxy, app):
            c = await Conn.open(proxy.port)
            size = 256 * 1024 * 1024
            await c.send(b"PUT /stall HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\nContent-Length: %d\r\n\r\n" % size)
            block = b"x" * (1024 * 1024)
            accepted = 0

            async def push():
                nonlocal accepted
                while accepted < size:
                    await c.send(block)
                    accepted += len(block)

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(push(), 0.25)
            assert [s.target for s in app.seen] == ["/stall"]
            assert accepted < 64 * 1024 * 1024
            r = await read_response(c.reader)  # the app never read: 504 once read_timeout passes
            assert (r.status, r.header("Connection")) == (504, "close")
            await c.close()

    run(scenario)


def test_client_leaving_mid_response_does_not_disturb_others(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            await c.send(b"GET /big?%d HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\n" % (64 * 1024 * 1024))
            await c.reader.readexactly(100_000)
            c.writer.transport.abort()
            await asyncio.sleep(0.05)
            other = await Conn.open(proxy.port)
            assert (await other.request(path="/ok")).status == 200
            await other.close()
            await c.close()

    run(scenario)


def test_pipelined_garbage_after_a_good_request(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            await c.send(b"GET /good HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\nNOT HTTP AT ALL\r\n\r\n")
            first = await read_response(c.reader)
            assert first.json()["target"] == "/good"
            assert (await read_response(c.reader)).status == 400
            assert await c.at_eof()
            await c.close()

    run(scenario)


def test_expect_100_continue_is_relayed(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            await c.send(
                b"POST /expect HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n"
                b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n"
            )
            interim = await read_response(c.reader)
            assert interim.status == 100
            await c.send(b"hello")
            r = await read_response(c.reader)
            assert r.json()["body_len"] == 5
            await c.close()

    run(scenario)


def test_stop_with_a_client_that_never_reads(run):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            await c.send(b"GET /big?%d HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\n" % (256 * 1024 * 1024))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await proxy.stop(timeout=0.1)
            assert time.monotonic() - started < 1.5
            c.writer.transport.abort()
            await c.close()

    run(scenario)


PIECES = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n",
        b"POST /p HTTP/1.1\r\n",
        b"HEAD /h HTTP/1.0\r\n",
        b"GET /ws HTTP/1.1\r\n",
        b"GET /chunked HTTP/1.1\r\n",
        b"Host: hello.lbsolo.localhost\r\n",
        b"Host: nosuch.lbsolo.localhost\r\n",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: close\r\n",
        b"Connection: Upgrade\r\nUpgrade: echo\r\n",
        b"Expect: 100-continue\r\n",
        b"\r\n",
        b"abc",
        b"3\r\nabc\r\n0\r\n\r\n",
    ]
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(PIECES, st.binary(max_size=12)), max_size=14))
def test_whatever_a_client_sends_the_proxy_survives(run, pieces):
    async def scenario():
        async with stack() as (proxy, _app):
            c = await Conn.open(proxy.port)
            await c.send(b"".join(pieces))
            c.writer.write_eof()
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(c.reader.read(), 3)  # the proxy answers what it can, then closes
            await c.close()
            ok = await Conn.open(proxy.port)
            assert (await ok.request(path="/after")).status == 200
            await ok.close()

    run(scenario)
