"""Load balancing, passive ejection and drain over real sockets (helpers from test_proxy)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

from lbsolo.proxy import Route, Target
from tests.unit.proxy_harness import App, Conn, closed_port, stack


def _route(*apps: App) -> dict[str, Route]:
    return {"hello": Route(app="hello", release="v1", targets=tuple(Target("127.0.0.1", a.port) for a in apps))}


def test_sequential_requests_spread_evenly_over_three_targets(run):
    async def scenario():
        async with stack() as (proxy, first):
            others = [await App().start(), await App().start()]
            try:
                proxy.set_routes(_route(first, *others))
                c = await Conn.open(proxy.port)
                for i in range(30):
                    assert (await c.request(path=f"/{i}")).status == 200
                await c.close()
                assert [len(a.seen) for a in (first, *others)] == [10, 10, 10]
            finally:
                for a in others:
                    await a.close()

    run(scenario)


def test_least_outstanding_requests_avoids_the_busy_target(run):
    async def scenario():
        async with stack() as (proxy, first):
            second = await App().start()
            try:
                proxy.set_routes(_route(first, second))
                slow = await Conn.open(proxy.port)
                pending = asyncio.ensure_future(slow.request(path="/slow?0.4"))
                while not (first.seen or second.seen):
                    await asyncio.sleep(0.01)
                busy, idle = (first, second) if first.seen else (second, first)
                c = await Conn.open(proxy.port)
                for i in range(5):
                    assert (await c.request(path=f"/fast{i}")).status == 200
                assert [s.target for s in busy.seen] == ["/slow?0.4"]
                assert len(idle.seen) == 5
                assert (await pending).status == 200
                await c.close()
                await slow.close()
            finally:
                await second.close()

    run(scenario)


def test_drain_lets_in_flight_requests_finish_and_sends_new_ones_elsewhere(run):
    async def scenario():
        async with stack() as (proxy, old):
            new = await App().start()
            try:
                old_target = Target("127.0.0.1", old.port)
                busy = await Conn.open(proxy.port)
                pending = asyncio.ensure_future(busy.request(path="/slow?0.4"))
                while not old.seen:
                    await asyncio.sleep(0.01)
                assert proxy.in_flight(old_target) == 1
                proxy.set_routes(_route(new))  # the rollout's atomic swap
                assert await proxy.wait_drained([old_target], timeout=0.05) is False
                c = await Conn.open(proxy.port)
                for i in range(3):
                    assert (await c.request(path=f"/after{i}")).status == 200
                assert [s.target for s in new.seen] == ["/after0", "/after1", "/after2"]
                assert await proxy.wait_drained([old_target], timeout=3) is True
                r = await pending
                assert r.status == 200 and r.json()["target"] == "/slow?0.4"
                assert proxy.in_flight(old_target) == 0
                assert await proxy.wait_drained([Target("127.0.0.1", 1)], timeout=0) is True
                await c.close()
                await busy.close()
            finally:
                await new.close()

    run(scenario)


def test_drain_counts_a_client_that_leaves_mid_request_as_finished(run):
    async def scenario():
        async with stack() as (proxy, app):
            target = Target("127.0.0.1", app.port)
            c = await Conn.open(proxy.port)
            await c.send(b"GET /slow?1 HTTP/1.1\r\nHost: hello.lbsolo.localhost\r\n\r\n")
            while not app.seen:
                await asyncio.sleep(0.01)
            assert proxy.in_flight(target) == 1
            waiter = asyncio.ensure_future(proxy.wait_drained([target], timeout=3))
            started = time.monotonic()
            sock = c.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.writer.transport.abort()  # a reset, not a half-close (which still waits for the answer)
            assert await waiter is True
            assert time.monotonic() - started < 0.5  # did not wait for the app's answer
            await c.close()

    run(scenario)


def test_a_refusing_target_is_ejected_and_requests_are_retried_elsewhere(run, caplog):
    async def scenario():
        async with stack() as (proxy, app):
            dead = Target("127.0.0.1", await closed_port())
            proxy.set_routes({"hello": Route(app="hello", targets=(dead, Target("127.0.0.1", app.port)))})
            for i in range(6):
                c = await Conn.open(proxy.port)
                assert (await c.request("POST", path=f"/{i}", body=b"x")).status == 200
                await c.close()
            assert len(app.seen) == 6
            refused = [r for r in caplog.records if "cannot connect" in r.getMessage()]
            assert len(refused) <= 1  # skipped after the first failure
            assert proxy.pool.is_ejected(dead) is (len(refused) == 1)

    caplog.set_level(logging.WARNING)
    run(scenario)


def test_requests_queue_for_a_connection_when_many_are_being_opened(run):
    async def scenario():
        async with stack() as (proxy, app):
            proxy.pool.connecting_max = 1
            conns = [await Conn.open(proxy.port) for _ in range(12)]
            results = await asyncio.gather(*(c.request(path="/slow?0.02") for c in conns))
            assert [r.status for r in results] == [200] * 12
            assert len(app.seen) == 12
            assert not proxy.pool.busy()
            for c in conns:
                await c.close()

    run(scenario)
